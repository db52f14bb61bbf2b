"""Reward wrappers: env checkers, post-step frames, one batched call per step, rollout relabelling."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from vlm_rm.envs import HumanoidEnvConfig, make_humanoid_env
from vlm_rm.wrappers import (
    FRAME_KEY,
    CLIPRewardWrapper,
    RelabelRewardsCallback,
    RenderToInfo,
    VecCLIPReward,
)

SIZE = 48
EPISODE = 6


class Brightness:
    """Deterministic frame reward that records every call's batch size."""

    def __init__(self):
        self.batch_sizes = []
        self.outputs = []

    def __call__(self, frames):
        self.batch_sizes.append(len(frames))
        out = frames.reshape(len(frames), -1).mean(axis=1) / 255.0
        self.outputs.append(out)
        return out


def _env(render_size=SIZE):
    return make_humanoid_env(HumanoidEnvConfig(render_size=render_size, max_episode_steps=EPISODE))


def _venv(n, seed=0):
    venv = DummyVecEnv([lambda: RenderToInfo(_env()) for _ in range(n)])
    venv.seed(seed)
    return venv


def test_gym_wrapper_passes_both_env_checkers_and_scores_the_post_step_frame(clip_reward):
    env = CLIPRewardWrapper(_env(render_size=224), clip_reward)
    gym_check_env(env.unwrapped)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.action_space.sample())
    expected = float(clip_reward(env.render()[None])[0])
    assert reward == pytest.approx(expected, abs=1e-6) and info["clip_reward"] == reward
    assert isinstance(info["env_reward"], float)
    env.close()
    with pytest.raises(ValueError, match="rgb_array"):
        CLIPRewardWrapper(gym.make("Pendulum-v1"), clip_reward)


def test_render_to_info_passes_both_env_checkers():
    env = RenderToInfo(_env())
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    env.reset(seed=0)
    assert env.step(env.action_space.sample())[4][FRAME_KEY].shape == (SIZE, SIZE, 3)
    env.close()


def _reference_frames(seed, actions):
    """Frames a lone env renders after each action, episode restarted at the time limit."""
    env = _env()
    env.reset(seed=seed)
    frames = []
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            env.reset()
    env.close()
    return frames


def test_vec_wrapper_scores_all_envs_in_one_call_and_keeps_the_terminal_frame():
    fn = Brightness()
    venv = VecCLIPReward(_venv(3), fn, mode="step", keep_frames=True)
    venv.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.4, 0.4, size=(EPISODE + 2, 3, venv.action_space.shape[0])).astype(np.float32)
    got_frames, got_rewards, got_dones = [], [], []
    for step_actions in actions:
        _, rewards, dones, infos = venv.step(step_actions)
        got_frames.append([info[FRAME_KEY] for info in infos])
        got_rewards.append(rewards)
        got_dones.append(dones)
        assert all("env_reward" in info for info in infos)
    assert fn.batch_sizes == [3] * len(actions)
    assert [d.tolist() for d in got_dones][EPISODE - 1] == [True] * 3
    for env_idx in range(3):
        reference = _reference_frames(env_idx, actions[:, env_idx])
        for t, frame in enumerate(reference):
            assert np.array_equal(got_frames[t][env_idx], frame), (env_idx, t)
            assert got_rewards[t][env_idx] == pytest.approx(frame.mean() / 255.0, rel=1e-6)
    venv.close()


def test_rollout_mode_defers_scoring_to_one_flush():
    step_fn, roll_fn = Brightness(), Brightness()
    step_env = VecCLIPReward(_venv(2), step_fn, mode="step")
    roll_env = VecCLIPReward(_venv(2), roll_fn, mode="rollout")
    step_env.reset()
    roll_env.reset()
    expected = []
    for _ in range(4):
        actions = np.zeros((2, step_env.action_space.shape[0]), dtype=np.float32)
        expected.append(step_env.step(actions)[1])
        _, placeholder, _, infos = roll_env.step(actions)
        assert placeholder.tolist() == [0.0, 0.0] and FRAME_KEY not in infos[0]
    assert roll_fn.batch_sizes == [] and roll_env.num_pending == 4
    flushed = roll_env.flush_pending()
    assert roll_fn.batch_sizes == [8] and flushed.shape == (4, 2)
    assert np.allclose(flushed, np.stack(expected))
    assert roll_env.num_pending == 0 and roll_env.flush_pending().shape == (0, 2)
    step_env.close()
    roll_env.close()


def test_vec_wrapper_needs_frames_and_a_known_mode():
    plain = DummyVecEnv([lambda: _env()])
    with pytest.raises(ValueError, match="mode must be one of"):
        VecCLIPReward(plain, Brightness(), mode="episode")
    wrapped = VecCLIPReward(plain, Brightness())
    wrapped.reset()
    with pytest.raises(KeyError, match="wrap each env in RenderToInfo"):
        wrapped.step(np.zeros((1, plain.action_space.shape[0]), dtype=np.float32))
    wrapped.close()


def test_relabel_callback_writes_rollout_rewards_into_the_replay_buffer():
    fn = Brightness()
    venv = VecCLIPReward(_venv(2), fn, mode="rollout")
    model = SAC("MlpPolicy", venv, learning_starts=100, train_freq=5, buffer_size=100, batch_size=8, seed=0,
                policy_kwargs={"net_arch": [8]})
    model.learn(total_timesteps=20, callback=RelabelRewardsCallback(venv))
    stored = model.replay_buffer.rewards[: model.replay_buffer.pos]
    assert stored.shape == (10, 2)
    assert fn.batch_sizes == [10, 10]  # one scoring call per rollout of 5 steps x 2 envs
    assert np.allclose(stored, np.concatenate(fn.outputs).reshape(10, 2))
    assert (stored > 0).all()
    venv.close()


@pytest.mark.slow
def test_subprocess_vec_env_renders_and_scores_in_workers():
    from vlm_rm.wrappers import make_reward_vec_env

    fn = Brightness()
    venv = make_reward_vec_env(HumanoidEnvConfig(render_size=SIZE, max_episode_steps=EPISODE), 2, fn,
                               vec_env="subproc", seed=0)
    venv.reset()
    for _ in range(EPISODE):
        _, rewards, dones, infos = venv.step(np.zeros((2, venv.action_space.shape[0]), dtype=np.float32))
    assert fn.batch_sizes == [2] * EPISODE and dones.all() and (rewards > 0).all()
    venv.close()
