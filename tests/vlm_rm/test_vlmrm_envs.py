"""Textured humanoid: scene, camera, render size/settings, frame timing, time limit, several envs."""

import mujoco
import numpy as np
import pytest

from PIL import Image

from vlm_rm.envs import (
    BODY_MATERIAL,
    FLOOR_MATERIAL,
    PAPER_RENDER_SIZE,
    CameraConfig,
    HumanoidEnvConfig,
    TexturedHumanoidEnv,
    make_humanoid_env,
    resize_frame,
    scene_xml_path,
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


def _texture_pixels(model, name):
    t = model.texture(name).id
    size = model.tex_width[t] * model.tex_height[t] * model.tex_nchannel[t]
    data = model.tex_data[model.tex_adr[t]:model.tex_adr[t] + size]
    return data.reshape(model.tex_height[t], model.tex_width[t], model.tex_nchannel[t])


def test_paper_scene_loads_the_shipped_textures_materials_and_light(env):
    model = env.model
    assert env.scene == "paper"
    folder = scene_xml_path("paper").parent
    assert (folder / "LICENSE").read_text().startswith("MIT License")  # the notice ships beside the images
    for texture, image in (("vlmrm_floor_tex", "tiles.png"), ("vlmrm_sky", "sky.png"), ("vlmrm_body_tex", "robot.png")):
        pixels = np.asarray(Image.open(folder / image).convert("RGB"))
        assert np.array_equal(_texture_pixels(model, texture), pixels), texture
    assert model.tex_type[model.texture("vlmrm_sky").id] == mujoco.mjtTexture.mjTEXTURE_SKYBOX
    floor = model.material(FLOOR_MATERIAL)
    assert model.geom("floor").matid[0] == floor.id
    assert floor.texrepeat.tolist() == [60, 60] and (floor.reflectance[0], floor.shininess[0], floor.specular[0]) == (0, 0, 0)
    body = model.material(BODY_MATERIAL)
    assert (body.specular[0], body.shininess[0], bool(body.texuniform[0])) == (1.0, 1.0, True)
    body_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0]
    assert all(model.geom_matid[g] == body.id for g in body_geoms)
    # one directional light pointing straight down replaces gymnasium's
    assert model.nlight == 1 and model.light_dir[0].tolist() == [0.0, 0.0, -1.0]
    assert model.light_diffuse[0].tolist() == [1.0, 1.0, 1.0] and model.light_specular[0].tolist() == [0.5, 0.5, 0.5]


def test_the_render_uses_the_scene_textures():
    def frame(blank_floor: bool) -> np.ndarray:
        env = TexturedHumanoidEnv(render_size=64)
        if blank_floor:  # before the first render, which uploads the textures
            _texture_pixels(env.model, "vlmrm_floor_tex")[:] = 0
        env.reset(seed=0)
        out = env.render()
        env.close()
        return out

    textured, blank = frame(False), frame(True)
    assert np.array_equal(textured[:10], blank[:10])  # the sky
    assert np.abs(textured[-10:].astype(int) - blank[-10:]).mean() > 20  # the floor is drawn from tiles.png
    assert textured[0, :, 2].mean() > textured[0, :, 0].mean() + 40  # blue sky from sky.png


def test_direct_render_settings_are_fast_and_the_paper_path_is_the_papers(env):
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert env.model.vis.quality.offsamples == 0
    flags = env._renderer.scene.flags
    assert not flags[mujoco.mjtRndFlag.mjRND_SHADOW] and not flags[mujoco.mjtRndFlag.mjRND_REFLECTION]

    paper = TexturedHumanoidEnv(render_size=64, render_path="paper")
    full = TexturedHumanoidEnv(render_size=PAPER_RENDER_SIZE, render_path="paper")
    for e in (paper, full):
        e.reset(seed=0)
    small, big = paper.render(), full.render()
    assert small.shape == (64, 64, 3) and big.shape == (480, 480, 3) and paper.width == 480
    assert paper.model.vis.quality.offsamples > 0
    assert paper._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW]
    assert np.array_equal(small, resize_frame(big, 64))
    # the same scene from the same camera: close to the direct frame, not equal to it
    assert 0 < np.abs(small.astype(int) - frame).mean() < 15
    paper.close()
    full.close()


def test_procedural_scene_is_kept_as_a_named_option():
    env = TexturedHumanoidEnv(render_size=64, scene="procedural")
    model = env.model
    assert model.material(FLOOR_MATERIAL).texrepeat.tolist() == [10, 10]
    assert model.tex_width[model.texture("vlmrm_sky").id] == 256  # the builtin gradient, not sky.png (778 px)
    env.reset(seed=0)
    frame = env.render()
    env.close()
    # gradient sky (bluish top row), green checker floor (greenish bottom row)
    assert frame[0, :, 2].mean() > frame[0, :, 0].mean() and frame[-1, :, 1].mean() > frame[-1, :, 0].mean() + 20


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


def test_plain_scene_and_bad_options():
    plain = TexturedHumanoidEnv(render_size=32, scene="plain")
    assert "vlmrm_floor" not in [plain.model.material(i).name for i in range(plain.model.nmat)]
    plain.close()
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        TexturedHumanoidEnv(render_mode="human")
    with pytest.raises(ValueError, match="scene must be one of"):
        TexturedHumanoidEnv(scene="moon")
    with pytest.raises(ValueError, match="render_path must be one of"):
        TexturedHumanoidEnv(render_path="raytraced")
