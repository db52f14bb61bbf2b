"""Reward wrappers that replace an environment's reward with a frame-based (CLIP) reward.

A reward function here is any callable `frames uint8 [N, H, W, 3] -> [N]` (torch or numpy), e.g.
`vlm_rm.reward.CLIPReward`. Frames are rendered inside each env right after its step, before a vector
env auto-resets it, so the last frame of an episode shows the final state and not the next reset.

- `CLIPRewardWrapper`: one gymnasium env, one frame scored per step.
- `RenderToInfo` + `VecCLIPReward`: SB3 vector envs; all envs' frames of a step travel in `info` and are
  scored in one batched call (mode "step"), or kept and scored in large batches when the rollout ends
  (mode "rollout"; `RelabelRewardsCallback` writes those rewards into the replay buffer before SAC
  trains on them, as the paper's 3,200-frame batches did).
The env's own reward stays available as `info["env_reward"]`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper

from vlm_rm.envs import HumanoidEnvConfig, make_humanoid_env

FrameRewardFn = Callable[[np.ndarray], "torch.Tensor | np.ndarray"]
FRAME_KEY = "frame"
MODES = ("step", "rollout")


def _score(reward_fn: FrameRewardFn, frames: np.ndarray) -> np.ndarray:
    values = reward_fn(frames)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.shape[0] != frames.shape[0]:
        raise ValueError(f"reward function returned {values.shape[0]} rewards for {frames.shape[0]} frames")
    return values


class CLIPRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Gymnasium wrapper: reward = reward_fn(frame rendered after the step)."""

    def __init__(self, env: gym.Env, reward_fn: FrameRewardFn) -> None:
        if env.render_mode != "rgb_array":
            raise ValueError(f"CLIPRewardWrapper needs render_mode='rgb_array', got {env.render_mode!r}")
        # Recorded so gymnasium can re-create the wrapped env from its spec (its env checker does).
        gym.utils.RecordConstructorArgs.__init__(self, reward_fn=reward_fn)
        gym.Wrapper.__init__(self, env)
        self.reward_fn = reward_fn

    def step(self, action: Any):
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        frame = self.env.render()
        reward = float(_score(self.reward_fn, frame[None])[0])
        info = {**info, "env_reward": float(env_reward), "clip_reward": reward}
        return obs, reward, terminated, truncated, info


class RenderToInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Puts the frame rendered right after each step into `info["frame"]` (for `VecCLIPReward`)."""

    def __init__(self, env: gym.Env) -> None:
        if env.render_mode != "rgb_array":
            raise ValueError(f"RenderToInfo needs render_mode='rgb_array', got {env.render_mode!r}")
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, FRAME_KEY: self.env.render()}


class VecCLIPReward(VecEnvWrapper):
    """SB3 vector-env wrapper scoring every env's post-step frame with one batched reward call.

    Each sub-env must be wrapped in `RenderToInfo`. mode="step": rewards are computed every step.
    mode="rollout": the step returns reward 0 and keeps the frames; `flush_pending()` scores them all
    (in `batch_size` chunks handled by the reward function) and returns [T, n_envs] rewards.
    Frames are removed from `info` unless `keep_frames` is set (SB3 would otherwise hold them).
    """

    def __init__(self, venv: VecEnv, reward_fn: FrameRewardFn, mode: str = "step", keep_frames: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.mode = mode
        self.keep_frames = keep_frames
        self._pending: list[np.ndarray] = []

    def reset(self):
        return self.venv.reset()

    def _frames(self, infos: list[dict]) -> np.ndarray:
        missing = [i for i, info in enumerate(infos) if FRAME_KEY not in info]
        if missing:
            raise KeyError(f"envs {missing} returned no info['{FRAME_KEY}']; wrap each env in RenderToInfo")
        frames = [info[FRAME_KEY] if self.keep_frames else info.pop(FRAME_KEY) for info in infos]
        return np.stack(frames)

    def step_wait(self):
        obs, env_rewards, dones, infos = self.venv.step_wait()
        frames = self._frames(infos)
        if self.mode == "step":
            rewards = _score(self.reward_fn, frames)
        else:
            self._pending.append(frames)
            rewards = np.zeros(self.num_envs, dtype=np.float32)
        for info, env_reward in zip(infos, env_rewards):
            info["env_reward"] = float(env_reward)
        return obs, rewards, dones, infos

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def flush_pending(self) -> np.ndarray:
        """Rewards [T, n_envs] of the T steps kept since the last flush (mode "rollout")."""
        if not self._pending:
            return np.zeros((0, self.num_envs), dtype=np.float32)
        frames = np.concatenate(self._pending)  # [T * n_envs, H, W, 3], step-major
        self._pending.clear()
        return _score(self.reward_fn, frames).reshape(-1, self.num_envs)


class RelabelRewardsCallback(BaseCallback):
    """Writes `VecCLIPReward(mode="rollout")` rewards into the off-policy replay buffer.

    `_on_step` runs after `env.step` and before SB3 stores the transition, so the buffer position
    read there is where that transition lands; `_on_rollout_end` runs before the gradient steps.
    """

    def __init__(self, vec_reward: VecCLIPReward, verbose: int = 0) -> None:
        super().__init__(verbose)
        if vec_reward.mode != "rollout":
            raise ValueError("RelabelRewardsCallback needs a VecCLIPReward in mode 'rollout'")
        self.vec_reward = vec_reward
        self._positions: list[int] = []

    def _on_step(self) -> bool:
        self._positions.append(int(self.model.replay_buffer.pos))
        return True

    def _on_rollout_end(self) -> None:
        rewards = self.vec_reward.flush_pending()
        if len(rewards) != len(self._positions):
            raise RuntimeError(f"{len(rewards)} pending reward steps but {len(self._positions)} stored transitions")
        if len(rewards):
            self.model.replay_buffer.rewards[np.asarray(self._positions)] = rewards
            self.logger.record("clip/rollout_mean_reward", float(rewards.mean()))
        self._positions.clear()


def make_rendering_env(config: HumanoidEnvConfig) -> gym.Env:
    """Textured humanoid whose steps carry their frame in `info` (a picklable env factory)."""
    return RenderToInfo(make_humanoid_env(config))


def make_reward_vec_env(
    config: HumanoidEnvConfig,
    n_envs: int,
    reward_fn: FrameRewardFn,
    mode: str = "step",
    vec_env: str = "dummy",
    seed: int | None = None,
) -> VecCLIPReward:
    """`n_envs` textured humanoids in one SB3 vector env with the frame reward applied.

    vec_env "dummy" steps all envs in this process (each with its own GL context); "subproc" runs
    one process per env (rendering in parallel; frames come back through `info`).
    """
    factories = [partial(make_rendering_env, config) for _ in range(n_envs)]
    if vec_env == "dummy":
        venv: VecEnv = DummyVecEnv(factories)
    elif vec_env == "subproc":
        venv = SubprocVecEnv(factories)
    else:
        raise ValueError(f"vec_env must be 'dummy' or 'subproc', got {vec_env!r}")
    if seed is not None:
        venv.seed(seed)
    return VecCLIPReward(venv, reward_fn, mode=mode)
