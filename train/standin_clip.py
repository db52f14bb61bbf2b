"""Train the stand-in CLIP for the VLM-RM humanoid (no downloaded weights needed) and evaluate it.

    python train/standin_clip.py --output_dir runs/standin_clip                  # a few CPU minutes
    python train/standin_clip.py --output_dir runs/standin_clip --steps 100      # a quick, weaker one

Renders the training frames (perturbed trajectories into every pose of the library, random-action
falls; `vlm_rm.pose_frames`), trains a small open_clip model contrastively on them with the paper's
task prompts as captions (`vlm_rm.standin_clip`), then renders held-out frames from another seed and
measures, for each of the paper's eight tasks and each alpha, the AUC of the goal-baseline reward
separating frames that pass the task's pose check from the others, and the EPIC distance between that
reward and the success indicator. The output directory is an open_clip model directory (load it with
`CLIPReward.load(DIR, ...)`, `train/humanoid_sac.py --clip_model DIR`, ...) plus `metrics.json`,
`train_log.jsonl`, `config.yaml` and `manifest.json`.

This CLIP is trained on renders of the very poses it scores: it is NOT zero-shot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmreward.cli import ScriptParser, run
from mmreward.errors import UsageError

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first GL context

STAGE = "standin_clip"


@dataclass
class StandinCLIPStageConfig:
    """Settings of the stage (YAML via --config, any field overridable as --field value)."""

    output_dir: str = "runs/standin_clip"
    # training frames
    trajectories_per_pose: int = field(default=64, metadata={"help": "perturbed trajectories into each pose"})
    points_per_trajectory: int = 4
    fall_episodes: int = 12
    scene: str = field(default="paper", metadata={"help": "scene of the frames (vlm_rm.envs.SCENES)"})
    frames_seed: int = 0
    # held-out frames (another seed: new perturbations of the same poses)
    heldout_trajectories_per_pose: int = field(default=12, metadata={"help": "0 skips the evaluation"})
    heldout_points_per_trajectory: int = 6
    heldout_fall_episodes: int = 6
    heldout_seed: int = 1
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    # optimisation
    steps: int = 1200
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_shift: int = field(default=16, metadata={"help": "random sideways shift of training frames, in pixels"})
    seed: int = 0
    torch_threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 keeps torch's default"})


def _frame_config(cfg: StandinCLIPStageConfig, heldout: bool):
    from vlm_rm.pose_frames import PoseFrameConfig

    if heldout:
        return PoseFrameConfig(trajectories_per_pose=cfg.heldout_trajectories_per_pose,
                               points_per_trajectory=cfg.heldout_points_per_trajectory,
                               fall_episodes=cfg.heldout_fall_episodes, scene=cfg.scene, seed=cfg.heldout_seed)
    return PoseFrameConfig(trajectories_per_pose=cfg.trajectories_per_pose,
                           points_per_trajectory=cfg.points_per_trajectory,
                           fall_episodes=cfg.fall_episodes, scene=cfg.scene, seed=cfg.frames_seed)


def check_inputs(cfg: StandinCLIPStageConfig) -> None:
    """Settings and the output folder, before any frame is rendered."""
    from mmreward.manifest import check_run_dir

    if cfg.frames_seed == cfg.heldout_seed:
        raise UsageError(f"--frames_seed and --heldout_seed are both {cfg.frames_seed}: held-out frames would "
                         "repeat the training perturbations")
    for name in ("trajectories_per_pose", "points_per_trajectory", "steps", "batch_size"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.max_shift < 0:
        raise UsageError(f"--max_shift must be 0 or more, got {cfg.max_shift}")
    check_run_dir(cfg.output_dir, STAGE)
    from vlm_rm.envs import SCENES  # imports MuJoCo and torch: after the cheap checks

    if cfg.scene not in SCENES:
        raise UsageError(f"--scene {cfg.scene!r}: known scenes are {', '.join(SCENES)}")


def train_and_evaluate(cfg: StandinCLIPStageConfig) -> dict:
    """Render the frames, train, save, evaluate on held-out frames; returns the manifest."""
    import torch
    import yaml

    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vlm_rm.pose_frames import render_pose_frames
    from vlm_rm.poses import POSE_NAMES
    from vlm_rm.reward_eval import evaluate_tasks, load_task_rewards, task_rewards
    from vlm_rm.standin_clip import NOTE, StandinTrainConfig, train_standin_clip

    out = start_run_dir(cfg.output_dir, STAGE)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)

    started = time.perf_counter()
    frames = render_pose_frames(_frame_config(cfg, heldout=False))
    render_seconds = time.perf_counter() - started
    cpu_started = time.process_time()
    trained = train_standin_clip(frames, out, StandinTrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, max_shift=cfg.max_shift,
        seed=cfg.seed))
    train_cpu_seconds = time.process_time() - cpu_started
    with open(out / "train_log.jsonl", "w") as log:
        for step, loss in trained["loss"]:
            log.write(json.dumps({"step": step, "loss": loss}) + "\n")

    metrics = {"train_frames": len(frames), "render_seconds": round(render_seconds, 2),
               "train_seconds": trained["train_seconds"], "train_cpu_seconds": round(train_cpu_seconds, 2),
               "final_loss": trained["loss"][-1][1]}
    if cfg.heldout_trajectories_per_pose > 0:
        heldout = render_pose_frames(_frame_config(cfg, heldout=True))
        rewards = task_rewards(load_task_rewards(out, POSE_NAMES), heldout.frames, cfg.alphas)
        tasks = evaluate_tasks(rewards, heldout)
        (out / "heldout_metrics.json").write_text(json.dumps(tasks, indent=2) + "\n")
        metrics["heldout_frames"] = len(heldout)
        metrics["min_auc"] = {f"{a:g}": min(t["auc"][f"{a:g}"] for t in tasks.values()) for a in cfg.alphas}
        metrics["auc"] = {task: t["auc"] for task, t in tasks.items()}
        metrics["epic_to_success"] = {task: t["epic"] for task, t in tasks.items()}
    frame_cfg = asdict(_frame_config(cfg, heldout=False))
    inputs = {"frames": {**frame_cfg, "poses": list(frame_cfg["poses"])}}
    return finalize_run_dir(out, stage=STAGE, inputs=inputs, metrics=metrics, extra={"note": NOTE})


def summary(out: Path, metrics: dict) -> str:
    """The run's last words: where the model is and its main figures."""
    auc = metrics.get("min_auc")
    held_out = (", ".join(f"alpha {a} {v:.3f}" for a, v in auc.items()) if auc else "not measured")
    return (f"done: {metrics['train_frames']} frames, trained in {metrics['train_seconds']:.0f} s; lowest held-out "
            f"task AUC {held_out}; stand-in CLIP (NOT zero-shot) in {out} (load it by path, e.g. --clip_model "
            f"{out}), heldout_metrics.json there")


def main(argv: list[str] | None = None) -> dict:
    (cfg,) = ScriptParser([StandinCLIPStageConfig], __doc__).parse(argv)
    check_inputs(cfg)
    manifest = train_and_evaluate(cfg)
    print(summary(Path(cfg.output_dir), manifest["metrics"]))
    return manifest


if __name__ == "__main__":
    run(main)
