"""Gymnasium Humanoid-v5 in a textured scene, rendered for CLIP.

Differences from plain Humanoid-v5, each fixing a problem of the original VLM-RM setup:
- a scene is merged into gymnasium's own humanoid.xml at run time, so the robot model stays
  gymnasium's. Scenes (`SCENES`): "paper" (default), the VLM-RM paper's stone-tile floor, cloudy sky,
  silver robot and overhead light, with its MIT-licensed images (`assets/paper_scene/`); "procedural",
  builtin textures only (gradient sky, green checker floor, skin-tone body; `assets/procedural_scene/`);
  "plain", gymnasium's own scene (for the texture ablation);
- render paths (`RENDER_PATHS`): "direct" (default) renders at the CLIP input size with fast settings
  (no offscreen multisampling, no shadows, no reflections); "paper" renders as the paper did, at
  480 px with gymnasium's default quality, then resizes to the CLIP input size (bicubic, antialiased,
  as the original's torchvision resize; the result is rounded to uint8). Both use a fixed free
  camera (default distance 3.5, look-at [0, 0, 1], elevation -10, azimuth 180, i.e. facing the robot);
- `render()` always shows the current state: after `reset` it is the reset state, after a step the
  post-step qpos (MuJoCo leaves body poses one substep behind qpos after mj_step; render recomputes them);
- each env owns a `mujoco.Renderer` whose GL context is made current before every render, so several
  envs in one process render their own scenes;
- falling does not end the episode by default (kneeling or lotus poses are below gymnasium's "healthy"
  height); episodes end by the time limit, which truncates.

Rendering is headless through EGL: importing this module sets `MUJOCO_GL=egl` unless MUJOCO_GL is
already set (MuJoCo reads it once, when it is first imported, so set it yourself if mujoco or
gymnasium's MuJoCo envs are imported earlier).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import xml.etree.ElementTree as ET  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv  # noqa: E402
from gymnasium.utils import EzPickle  # noqa: E402

ENV_ID = "vlm_rm/TexturedHumanoid-v0"
SCENE_XML = "scene.xml"  # inside each scene's folder under assets/, beside its texture files
SCENES = ("paper", "procedural", "plain")  # "plain": gymnasium's own scene, nothing merged
RENDER_PATHS = ("direct", "paper")
PAPER_RENDER_SIZE = 480  # gymnasium's default frame size, which the paper rendered at
FLOOR_GEOM = "floor"
FLOOR_MATERIAL = "vlmrm_floor"
BODY_MATERIAL = "vlmrm_body"


@dataclass
class CameraConfig:
    """Free camera looking at a fixed point (does not follow the robot)."""

    distance: float = 3.5  # metres from the look-at point
    lookat: tuple[float, float, float] = (0.0, 0.0, 1.0)  # world point at the image centre
    elevation: float = -10.0  # degrees; negative looks down
    azimuth: float = 180.0  # degrees; 180 looks along -x, i.e. at the front of the robot (it faces +x)


@dataclass
class HumanoidEnvConfig:
    """Options of `make_humanoid_env` (all forwarded to `TexturedHumanoidEnv` except the time limit)."""

    render_size: int = 224  # square frame side; use the CLIP model's input size
    max_episode_steps: int = 100  # the paper's episode length; reaching it truncates
    scene: str = "paper"  # one of SCENES
    render_path: str = "direct"  # one of RENDER_PATHS
    fast_render: bool = True  # direct path: no offscreen multisampling, shadows or reflections
    terminate_when_unhealthy: bool = False  # gymnasium's fall termination; off for floor poses
    reset_noise_scale: float = 1e-2
    camera: CameraConfig = field(default_factory=CameraConfig)


def scene_xml_path(scene: str = "paper") -> Path:
    """The scene file of a textured scene ("paper" or "procedural")."""
    if scene not in SCENES or scene == "plain":
        raise ValueError(f"no scene file for {scene!r}; textured scenes: paper, procedural")
    return Path(str(resources.files("vlm_rm") / "assets" / f"{scene}_scene" / SCENE_XML))


def scene_texture_files(scene_xml: str | Path) -> dict[str, bytes]:
    """The image files a scene's textures name, read from the scene's folder (MuJoCo's `assets` map)."""
    folder = Path(scene_xml).parent
    files = {}
    for texture in ET.parse(scene_xml).getroot().iter("texture"):
        name = texture.get("file")
        if name is None:
            continue
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{scene_xml}: texture file {name!r} not found in {folder}")
        files[name] = path.read_bytes()
    return files


def build_textured_xml(base_xml: str | Path, scene_xml: str | Path | None = None) -> str:
    """gymnasium's humanoid XML with a scene merged in (default: the paper's, assets/paper_scene).

    The scene's <visual> children replace the base's of the same tag, its <asset> replaces the base's,
    and lights in its <worldbody> replace the base's lights. Texture files keep their relative names:
    load the result with `mujoco.MjModel.from_xml_string(xml, scene_texture_files(scene_xml))`.
    """
    base = ET.parse(base_xml).getroot()
    scene = ET.parse(scene_xml or scene_xml_path()).getroot()

    visual = base.find("visual")
    if visual is None:
        visual = ET.SubElement(base, "visual")
    scene_visual = scene.find("visual")
    for child in list(scene_visual) if scene_visual is not None else []:
        for old in visual.findall(child.tag):
            visual.remove(old)
        visual.append(child)

    # gymnasium's textures and materials are dropped; ours replace them.
    asset = base.find("asset")
    if asset is not None:
        base.remove(asset)
    base.insert(list(base).index(visual) + 1, scene.find("asset"))

    # Body geoms take their material from the default class; its rgba would tint the texture.
    for geom_default in base.iter("default"):
        geom = geom_default.find("geom")
        if geom is not None:
            geom.set("material", BODY_MATERIAL)
            geom.attrib.pop("rgba", None)
    floor = next((g for g in base.iter("geom") if g.get("name") == FLOOR_GEOM), None)
    if floor is None:
        raise ValueError(f"{base_xml}: no geom named {FLOOR_GEOM!r} to texture")
    floor.set("material", FLOOR_MATERIAL)
    floor.attrib.pop("rgba", None)

    scene_world = scene.find("worldbody")
    lights = scene_world.findall("light") if scene_world is not None else []
    if lights:
        world = base.find("worldbody")
        for old in world.findall("light"):
            world.remove(old)
        for position, light in enumerate(lights):
            world.insert(position, light)
    return ET.tostring(base, encoding="unicode")


class TexturedHumanoidEnv(HumanoidEnv):
    """Humanoid-v5 rendering RGB frames of `render_size` from a fixed camera (render_mode rgb_array)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        render_size: int = 224,
        camera: CameraConfig | dict | None = None,
        scene: str = "paper",
        render_path: str = "direct",
        fast_render: bool = True,
        terminate_when_unhealthy: bool = False,
        render_mode: str = "rgb_array",
        **humanoid_kwargs,
    ) -> None:
        if render_mode != "rgb_array":
            raise ValueError(f"TexturedHumanoidEnv renders frames only (render_mode='rgb_array'), got {render_mode!r}")
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
        if render_path not in RENDER_PATHS:
            raise ValueError(f"render_path must be one of {RENDER_PATHS}, got {render_path!r}")
        self.render_size = int(render_size)
        self.camera_config = CameraConfig(**camera) if isinstance(camera, dict) else (camera or CameraConfig())
        self.scene = scene
        self.render_path = render_path
        # The paper path draws as gymnasium does by default; fast settings belong to the direct path.
        self.fast_render = fast_render and render_path == "direct"
        draw_size = PAPER_RENDER_SIZE if render_path == "paper" else self.render_size
        self._renderer: mujoco.Renderer | None = None
        super().__init__(
            render_mode=render_mode,
            width=draw_size,
            height=draw_size,
            terminate_when_unhealthy=terminate_when_unhealthy,
            **humanoid_kwargs,
        )
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": int(np.round(1.0 / self.dt))}
        EzPickle.__init__(self, render_size, self.camera_config, scene, render_path, fast_render,
                          terminate_when_unhealthy, render_mode, **humanoid_kwargs)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        # Called by MujocoEnv.__init__ with self.fullpath = gymnasium's humanoid.xml.
        if self.scene == "plain":
            model = mujoco.MjModel.from_xml_path(self.fullpath)
        else:
            scene_xml = scene_xml_path(self.scene)
            model = mujoco.MjModel.from_xml_string(build_textured_xml(self.fullpath, scene_xml),
                                                   scene_texture_files(scene_xml))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        if self.fast_render:
            model.vis.quality.offsamples = 0
        return model, mujoco.MjData(model)

    def _make_camera(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.distance = self.camera_config.distance
        cam.lookat[:] = self.camera_config.lookat
        cam.elevation = self.camera_config.elevation
        cam.azimuth = self.camera_config.azimuth
        return cam

    def render(self) -> np.ndarray:
        """uint8 frame [render_size, render_size, 3] of the current state."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            if self.fast_render:
                self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._camera = self._make_camera()
        # After mj_step, body poses in `data` still belong to the last substep's start (MuJoCo
        # integrates qpos after computing them); recompute them so the frame shows the current qpos.
        mujoco.mj_forward(self.model, self.data)
        # Renderer.render makes this env's GL context current first, so envs sharing a process
        # never draw into each other's framebuffer.
        self._renderer.update_scene(self.data, camera=self._camera)
        frame = self._renderer.render()
        if frame.shape[0] != self.render_size:
            frame = resize_frame(frame, self.render_size)
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3], bicubic with antialiasing on the tensor (the original VLM-RM
    resized its 480 px frames this way inside its CLIP transform), rounded back to uint8."""
    pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    resized = TF.resize(pixels, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return resized.permute(1, 2, 0).numpy()


def make_humanoid_env(config: HumanoidEnvConfig | None = None) -> gym.Env:
    """`gym.make` of the textured humanoid with the config's time limit (TimeLimit truncates)."""
    cfg = config or HumanoidEnvConfig()
    return gym.make(
        ENV_ID,
        max_episode_steps=cfg.max_episode_steps,
        render_size=cfg.render_size,
        camera=cfg.camera,
        scene=cfg.scene,
        render_path=cfg.render_path,
        fast_render=cfg.fast_render,
        terminate_when_unhealthy=cfg.terminate_when_unhealthy,
        reset_noise_scale=cfg.reset_noise_scale,
    )


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=TexturedHumanoidEnv, max_episode_steps=100)
