"""Textured humanoid: scene, camera, render size/settings, frame timing, time limit, several envs."""

import mujoco
import numpy as np
import pytest

from vlm_rm.envs import (
    FLOOR_MATERIAL,
    CameraConfig,
    HumanoidEnvConfig,
    TexturedHumanoidEnv,
    make_humanoid_env,
)
from vlm_rm.poses import reference_qpos


@pytest.fixture
def env():
    env = TexturedHumanoidEnv(render_size=64)
    yield env
    env.close()


def _render_state(qpos, qvel, size=64):
    """Frame of a fresh env put into the given state: what the frame of that state must look like."""
    other = TexturedHumanoidEnv(render_size=size)
    other.reset(seed=123)
    other.set_state(qpos, qvel)
    frame = other.render()
    other.close()
    return frame


def test_scene_is_textured_and_render_settings_are_fast(env):
    model = env.model
    assert model.vis.quality.offsamples == 0
    floor = model.geom("floor")
    assert model.mat_texid[floor.matid[0]].max() >= 0 and model.material(floor.matid[0]).name == FLOOR_MATERIAL
    body_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0]
    assert all(model.geom_matid[g] >= 0 for g in body_geoms)
    assert any(model.tex_type[t] == mujoco.mjtTexture.mjTEXTURE_SKYBOX for t in range(model.ntex))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    flags = env._renderer.scene.flags
    assert not flags[mujoco.mjtRndFlag.mjRND_SHADOW] and not flags[mujoco.mjtRndFlag.mjRND_REFLECTION]
    # the sky (top row) is bluish, the floor (bottom row) greenish
    assert frame[0, :, 2].mean() > frame[0, :, 0].mean() and frame[-1, :, 1].mean() > frame[-1, :, 0].mean()


def test_camera_defaults_match_the_paper(env):
    cam = env._make_camera()
    assert (cam.distance, cam.elevation, cam.azimuth) == (3.5, -10.0, 180.0)
    assert cam.lookat.tolist() == [0.0, 0.0, 1.0]
    moved = TexturedHumanoidEnv(render_size=64, camera=CameraConfig(azimuth=90.0))
    env.reset(seed=0)
    moved.reset(seed=0)
    assert not np.array_equal(env.render(), moved.render())
    moved.close()


def test_frames_show_the_current_state_after_reset_and_after_steps(env):
    env.reset(seed=0)
    reset_frame = env.render()
    assert np.array_equal(reset_frame, _render_state(env.data.qpos.copy(), env.data.qvel.copy()))
    env.action_space.seed(0)
    for _ in range(15):
        env.step(env.action_space.sample())
    stepped = env.render()
    assert not np.array_equal(stepped, reset_frame)
    assert np.array_equal(stepped, _render_state(env.data.qpos.copy(), env.data.qvel.copy()))
    env.reset(seed=0)
    assert np.array_equal(env.render(), reset_frame)


def test_time_limit_truncates_and_falling_does_not_terminate():
    env = make_humanoid_env(HumanoidEnvConfig(render_size=32, max_episode_steps=30))
    env.reset(seed=0)
    env.action_space.seed(0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(30)]
    assert all(not terminated for terminated, _ in flags)
    assert [truncated for _, truncated in flags] == [False] * 29 + [True]
    assert env.unwrapped.data.qpos[2] < 1.0  # it did fall below gymnasium's healthy height
    env.close()


def test_several_envs_in_one_process_render_their_own_state():
    envs = [TexturedHumanoidEnv(render_size=64) for _ in range(3)]
    qposes = [reference_qpos(envs[0].model, name) for name in ("standing", "kneeling", "arms_raised")]
    for e, q in zip(envs, qposes):
        e.reset(seed=0)
        e.set_state(q, np.zeros(e.model.nv))
    first = [e.render() for e in envs]
    second = [e.render() for e in reversed(envs)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])
    assert np.array_equal(first[1], _render_state(qposes[1], np.zeros(envs[1].model.nv)))
    for e in envs:
        e.close()


def test_plain_scene_and_bad_render_mode():
    plain = TexturedHumanoidEnv(render_size=32, textured=False)
    assert "vlmrm_floor" not in [plain.model.material(i).name for i in range(plain.model.nmat)]
    plain.close()
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        TexturedHumanoidEnv(render_mode="human")
