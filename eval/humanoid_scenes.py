"""Frames of the humanoid's scenes and render paths side by side, with the time each takes per frame.

    python eval/humanoid_scenes.py --output_dir runs/humanoid_scenes

Rows: the paper's scene rendered directly at the CLIP input size (fast settings, the default), the
paper's scene through the paper's render path (480 px at default quality, then resized), the
procedural scene and gymnasium's plain scene. Columns: a few poses of the pose library. Writes
`scenes.png` and `scenes.json` (milliseconds per frame of each row, measured on these renders).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmreward.cli import ScriptParser, run
from mmreward.errors import UsageError

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first GL context

if TYPE_CHECKING:
    import numpy as np

ROWS = (("paper", "direct"), ("paper", "paper"), ("procedural", "direct"), ("plain", "direct"))


@dataclass
class ScenesConfig:
    """Settings of the scene comparison."""

    output_dir: str = "runs/humanoid_scenes"
    poses: list[str] = field(default_factory=lambda: ["standing", "kneeling", "arms_raised", "lotus"])
    render_size: int = 224
    repeats: int = field(default=5, metadata={"help": "timed renders per frame (after one warm-up)"})

    def __post_init__(self) -> None:
        if not self.poses:
            raise UsageError("--poses: give at least one pose")
        if self.render_size <= 0 or self.repeats <= 0:
            raise UsageError(f"--render_size and --repeats must be positive, got {self.render_size}, {self.repeats}")


def render_rows(cfg: ScenesConfig) -> tuple[np.ndarray, list[dict]]:
    """The frame grid [rows * S, poses * S, 3] and, per row, its scene, path and ms per frame."""
    import time

    import numpy as np

    from vlm_rm.envs import TexturedHumanoidEnv
    from vlm_rm.poses import reference_qpos

    rows, timings = [], []
    for scene, path in ROWS:
        env = TexturedHumanoidEnv(render_size=cfg.render_size, scene=scene, render_path=path)
        env.reset(seed=0)
        frames, seconds = [], 0.0
        for pose in cfg.poses:
            env.set_state(reference_qpos(env.model, pose), np.zeros(env.model.nv))
            frames.append(env.render())  # warm-up (the first render also creates the GL context)
            started = time.perf_counter()
            for _ in range(cfg.repeats):
                env.render()
            seconds += time.perf_counter() - started
        env.close()
        rows.append(np.concatenate(frames, axis=1))
        timings.append({"scene": scene, "render_path": path,
                        "ms_per_frame": round(1000 * seconds / (cfg.repeats * len(cfg.poses)), 1)})
    return np.concatenate(rows, axis=0), timings


def check_inputs(cfg: ScenesConfig) -> None:
    """The poses and the output folder, before any rendering."""
    from vlm_rm.poses import REFERENCE_POSES

    unknown = [pose for pose in cfg.poses if pose not in REFERENCE_POSES]
    if unknown:
        raise UsageError(f"--poses: unknown {unknown}; known: {', '.join(REFERENCE_POSES)}")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {out}: is a file, not a folder")


def main(argv: list[str] | None = None) -> list[dict]:
    (cfg,) = ScriptParser([ScenesConfig], __doc__).parse(argv)
    check_inputs(cfg)
    from PIL import Image

    grid, timings = render_rows(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out / "scenes.png")
    (out / "scenes.json").write_text(json.dumps({"poses": cfg.poses, "rows": timings}, indent=2) + "\n")
    speeds = ", ".join(f"{t['scene']}/{t['render_path']} {t['ms_per_frame']} ms" for t in timings)
    print(f"done: {len(cfg.poses)} poses in {len(timings)} scene rows ({speeds} per frame); {out}/scenes.png, "
          f"{out}/scenes.json")
    return timings


if __name__ == "__main__":
    run(main)
