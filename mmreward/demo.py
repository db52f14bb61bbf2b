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
from mmreward.report import Report, plot_lines

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
    """Run a stage script from the checkout (Python with this interpreter, shell scripts with bash);
    its output goes to `log_path`."""
    path = REPO_ROOT / script
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage script missing; the demo must run from a source checkout")
    launcher = ["bash"] if path.suffix == ".sh" else [sys.executable]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable}
    env.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    env.setdefault("MUJOCO_GL", "egl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run([*launcher, str(path), *args], stdout=log, stderr=subprocess.STDOUT,
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


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Training steps per demo run: shorter than the configs' own schedules so the whole demo fits in
# 15 CPU minutes; the configs (and `make test-slow`) train longer.
DEMO_REWARD_STEPS = {"basereward_image": 800, "basereward_video": 400,
                     "rewarddance_image": 300, "rewarddance_video": 250}


def _train_reward_model(ctx: DemoContext, name: str, config: str, modality: str) -> Path:
    """Run `train/reward.py` on the demo's data and tiny backbone; return its output directory."""
    run = ctx.out / name
    data = ctx.out / "data" / modality
    run_script(
        "train/reward.py",
        ["--config", f"train/configs/{config}", "--backbone", str(ctx.paths["vlm"]),
         "--train_file", str(data / "train.jsonl"), "--val_file", str(data / "val.jsonl"),
         "--output_dir", str(run), "--max_steps", str(DEMO_REWARD_STEPS[name])],
        ctx.out / "logs" / f"{name}.log",
    )
    ctx.paths[name] = run
    return run


def _report_reward_run(ctx: DemoContext, title: str, runs: dict[str, Path]) -> None:
    """Loss curves and final validation accuracy per dimension of reward-model runs."""
    ctx.report.heading(title)
    rows, curves = [], {}
    for name, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        row = {"run": name, "steps": metrics.get("steps"), "train s": metrics.get("train_seconds")}
        row.update({key.removeprefix("val/accuracy/"): value for key, value in metrics.items()
                    if key.startswith("val/accuracy/")})
        rows.append(row)
        log = [entry for entry in _read_jsonl(run / "logs" / "train_log.jsonl") if "train/loss" in entry]
        curves[name] = ([entry["step"] for entry in log], [entry["train/loss"] for entry in log])
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("run", "steps", "train s"), k))
    ctx.report.text("Validation pair accuracy per dimension (without ties) after training:")
    ctx.report.table(rows, columns)
    plot = plot_lines(curves, ctx.out / "assets" / f"{title.split(':')[0].lower()}_loss.png",
                      f"{title.split(':')[0]} training loss", ylabel="loss")
    ctx.report.image(plot, caption="training loss (logged every few steps)")


def step_basereward(ctx: DemoContext) -> None:
    runs = {
        "basereward_image": _train_reward_model(ctx, "basereward_image", "reward_image.yaml", "images"),
        "basereward_video": _train_reward_model(ctx, "basereward_video", "reward_video.yaml", "videos"),
    }
    _report_reward_run(ctx, "BaseReward: scalar head, Bradley-Terry", runs)


def step_rewarddance(ctx: DemoContext) -> None:
    runs = {
        "rewarddance_image": _train_reward_model(ctx, "rewarddance_image", "rewarddance_image.yaml", "images"),
        "rewarddance_video": _train_reward_model(ctx, "rewarddance_video", "rewarddance_video.yaml", "videos"),
    }
    _report_reward_run(ctx, "RewardDance: P(yes) from the LM head", runs)


def _stage_metrics(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["metrics"]


def step_vr_thinker(ctx: DemoContext) -> None:
    """Cold-start SFT -> rejection sampling -> SFT -> GRPO (train/vr_thinker.sh), chained by manifests."""
    runs = ctx.out / "vr_thinker"
    run_script("train/vr_thinker.sh", [str(runs)], ctx.out / "logs" / "vr_thinker.log")
    ctx.paths["vrt_final"] = runs / "grpo"
    rows = []
    for stage in ("sft", "sft2"):
        metrics = _stage_metrics(runs / stage)
        for when in ("eval_before", "eval_after"):
            if when in metrics:
                rows.append({"stage": f"{stage} ({when.removeprefix('eval_')})",
                             "format-valid rate": metrics[when]["format_valid_rate"],
                             "overall accuracy": metrics[when]["overall_accuracy"]})
    rejection = _stage_metrics(runs / "rejection")
    rows.append({"stage": "rejection sampling", "acceptance rate": rejection["acceptance_rate"],
                 "kept traces": rejection["kept_traces"]})
    grpo = _stage_metrics(runs / "grpo")
    for when in ("eval_start", "eval_end"):
        if grpo.get(when):
            rows.append({"stage": f"grpo ({when.removeprefix('eval_')})", "mean reward": grpo[when]["eval/reward"],
                         "overall accuracy": grpo[when]["eval/accuracy/overall"]})
    ctx.report.heading("VR-Thinker: SFT -> rejection sampling -> SFT -> GRPO")
    ctx.report.text("Tiny random one-layer model on small synthetic video pairs, so accuracies are those of a "
                    "model that learns the answer format and a little of the task in CPU minutes.", note=True)
    ctx.report.table(rows, ["stage", "format-valid rate", "overall accuracy", "acceptance rate", "kept traces",
                            "mean reward"])
    traces = sorted((runs / "grpo").rglob("*.html")) or sorted((runs / "sft2").rglob("*.html"))
    if traces:
        ctx.report.page(traces[-1], caption="an example trace: reasoning per turn and the frames the model selected")


def _evaluate(ctx: DemoContext, name: str, model: Path, data: Path, extra: list[str] | None = None) -> Path:
    out = ctx.out / "eval" / name
    run_script("eval/preference.py",
               ["--model", str(model), "--data", str(data), "--out", str(out), "--progress", "false",
                *(extra or [])],
               ctx.out / "logs" / f"eval_{name}.log")
    return out


def _fmt_interval(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    return f"{entry['estimate']:.3f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def _headline(metrics: dict) -> dict[str, str]:
    """Overall accuracy with/without ties plus per-dimension accuracy of one `metrics.json`."""
    dims = metrics["dimensions"]
    row = {"pairs": str(metrics["counts"]["scored"]), "errors": str(metrics["counts"]["errors"])}
    for dim in ["overall", *sorted(d for d in dims if d != "overall")]:
        if dim in dims:
            row[f"{dim} w/o ties"] = _fmt_interval(dims[dim]["accuracy"])
            row[f"{dim} w/ ties"] = _fmt_interval(dims[dim]["accuracy_with_ties"])
    return row


def step_evaluation(ctx: DemoContext) -> None:
    test_videos = ctx.out / "data" / "videos" / "test.jsonl"
    evaluated: dict[str, Path] = {}
    for name in ("basereward_video", "rewarddance_video"):
        if name in ctx.paths:
            evaluated[name] = _evaluate(ctx, name, ctx.paths[name], test_videos)
    if "vrt_final" in ctx.paths:
        evaluated["vr_thinker"] = _evaluate(ctx, "vr_thinker", ctx.paths["vrt_final"], test_videos,
                                            ["--judge", "vr_thinker", "--limit", "16"])
    evaluated["clip_baseline"] = _evaluate(ctx, "clip_baseline", ctx.paths["clip"], test_videos,
                                           ["--scorer", "clip"])
    ctx.report.heading("Evaluation on the held-out synthetic video pairs")
    ctx.report.text("Accuracy without ties drops tie-labelled pairs and counts a zero score difference as "
                    "wrong; accuracy with ties uses tie calibration over |score difference| (VideoAlign's "
                    "protocol). Brackets: bootstrap 95% intervals.")
    rows = []
    for name, out in evaluated.items():
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"model": name, **_headline(metrics)})
    ctx.report.table(rows, sorted({k for row in rows for k in row}, key=lambda k: (k != "model", k)))
    for name, out in evaluated.items():
        for png in (out / "assets" / "accuracy.png", out / "assets" / "delta_overall.png"):
            if not png.exists():
                continue
            ctx.report.image(png, caption=f"{name}: {png.stem.replace('_', ' ')}")


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("synthetic data", step_data),
    ("tiny backbones", step_backbones),
    ("BaseReward training", step_basereward),
    ("RewardDance training", step_rewarddance),
    ("evaluation", step_evaluation),
    ("humanoid SAC with a CLIP reward", step_humanoid),
]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and models")
    parser.add_argument("--vr-thinker", action="store_true",
                        help="also run the VR-Thinker chain (SFT -> rejection sampling -> SFT -> GRPO) and "
                             "evaluate the judge; about 25 more CPU minutes, so off by default")
    args = parser.parse_args(argv)
    steps = list(STEPS)
    if args.vr_thinker:  # before evaluation, which then also scores the judge
        steps.insert([name for name, _ in steps].index("evaluation"), ("VR-Thinker chain", step_vr_thinker))
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=args.out, seed=args.seed, report=Report("mmreward demo", args.out))
    with tqdm(steps, desc="demo", unit="step") as bar:
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
