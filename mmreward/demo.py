"""End-to-end demo on the embedded default: synthetic data + tiny offline models, CPU only.

`python -m mmreward.demo --out runs/demo` (what `make demo` runs) generates the synthetic preference
set, builds tiny random backbones, runs each training / evaluation stage as the user would (the
stage scripts under train/ and eval/, as subprocesses, chained by their output directories), and
writes `report.html` with tables and plots computed in this run.

The library never imports the stage scripts (DESIGN.md); the demo runs them from the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from mmreward.backbones.clip import build_tiny_clip
from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.report import Report

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoContext:
    """State shared by the demo steps: where things are written and what earlier steps produced."""

    out: Path
    seed: int
    report: Report
    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_script(script: str, args: list[str], log_path: Path) -> None:
    """Run a stage script from the checkout with this interpreter; its output goes to `log_path`."""
    path = REPO_ROOT / script
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage script missing; the demo must run from a source checkout")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    env.setdefault("MUJOCO_GL", "egl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, str(path), *args], stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{script} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def step_data(ctx: DemoContext) -> None:
    config = SyntheticConfig()
    paths = generate_synthetic(ctx.out / "data", seed=ctx.seed, config=config)
    ctx.paths.update({f"data/{key}": value for key, value in paths.items()})
    manifest = json.loads(Path(paths["manifest"]).read_text())
    ctx.report.heading("Synthetic preference data")
    ctx.report.text(
        "Seeded image and video pairs whose preference is known: text alignment (colour/shape/count of "
        "the drawn objects against the prompt), visual quality (noise, blur) and, for videos, motion "
        "quality (smooth vs jittery or frozen)."
    )
    rows = [{"split": key, "pairs": count} for key, count in manifest["pairs"].items()]
    ctx.report.table(rows)


def step_backbones(ctx: DemoContext) -> None:
    ctx.paths["vlm"] = build_tiny_vlm(ctx.out / "models" / "tiny-qwen2_5_vl", family="qwen2_5_vl", seed=ctx.seed)
    ctx.paths["clip"] = build_tiny_clip(ctx.out / "models" / "tiny-clip", seed=ctx.seed)
    ctx.report.heading("Backbones")
    ctx.report.text(
        "Tiny random Qwen2.5-VL and open_clip models of the real classes, saved to a directory and "
        "loaded by path exactly as a 7B checkpoint would be. Their weights start random.",
        note=True,
    )


def step_humanoid(ctx: DemoContext) -> None:
    run = ctx.out / "humanoid_sac"
    run_script(
        "train/humanoid_sac.py",
        ["--config", "train/configs/humanoid_sac_cpu.yaml", "--output_dir", str(run)],
        ctx.out / "logs" / "humanoid_sac.log",
    )
    manifest = json.loads((run / "manifest.json").read_text())
    metrics = manifest["metrics"]
    ctx.report.heading("VLM-RM: CLIP reward driving a MuJoCo humanoid (SAC)")
    ctx.report.text(
        "The CLIP model here is tiny with RANDOM weights, so its reward carries no meaning: this run "
        "exercises rendering at the CLIP input size, batched CLIP rewards, SAC updates, evaluation "
        "videos and pose-based success checks. Full scale (GPU, ViT-bigG-14 weights from a local file): "
        "python train/humanoid_sac.py --config train/configs/humanoid_sac_paper.yaml "
        "--clip_pretrained /path/to/open_clip_pytorch_model.bin --output_dir runs/humanoid_kneeling",
        note=True,
    )
    ctx.report.table([{key: metrics[key] for key in
                       ("env_steps", "env_steps_per_s", "eval_clip_return", "eval_success_rate", "pose")}])
    ctx.report.image(run / "reward_curve.png", caption="CLIP reward during training")
    videos = sorted((run / "videos").glob("*.mp4"))
    if videos:
        ctx.report.video(videos[-1], caption="last evaluation episode")


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("synthetic data", step_data),
    ("tiny backbones", step_backbones),
    ("humanoid SAC with a CLIP reward", step_humanoid),
]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and models")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=args.out, seed=args.seed, report=Report("mmreward demo", args.out))
    with tqdm(STEPS, desc="demo", unit="step") as bar:
        for name, step in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            step(ctx)
            ctx.timings[name] = time.perf_counter() - start
    ctx.report.heading("Timings")
    ctx.report.table([{"step": name, "seconds": secs} for name, secs in ctx.timings.items()])
    path = ctx.report.write()
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
