"""CLIP reward of the humanoid tasks: along a scripted trajectory into each pose, for a sweep of alpha,
and measured against the pose-success indicator (AUC, EPIC distance).

    python eval/humanoid_reward_curve.py --clip_model tiny --output_dir runs/reward_curve
    python eval/humanoid_reward_curve.py --clip_model runs/standin_clip --tasks kneeling lotus standing \\
        --heldout_trajectories_per_pose 6 --output_dir runs/reward_curve_standin
    python eval/humanoid_reward_curve.py --clip_model ViT-bigG-14 --clip_pretrained /path/bigG.bin \\
        --tasks kneeling --goal_prompts "a humanoid robot kneeling"

For each task (a pose of vlm_rm.poses; goal prompt: the paper's prompt of that pose unless
`--goal_prompts` is given for a single task) the trajectory blends the joint angles of the start pose
into the task's constructed pose and keeps the body on the floor. Frames are rendered in the scene
(default: the paper's) and embedded once; the reward for every alpha comes from those embeddings.
A good reward rises towards the goal pose; the plot shades where the pose's check holds.

Against success: per task and alpha, the AUC of the reward ranking frames that pass the task's check
above the others, and the EPIC distance between the reward and the 0/1 success indicator (rewards of
the next state; transitions are consecutive frames of each trajectory or episode). They are measured on
held-out perturbed frames (`vlm_rm.pose_frames`, seed `heldout_seed`) when `heldout_trajectories_per_pose`
> 0, otherwise on the scripted trajectories of all the tasks.

Writes `reward_curves.png`, `frames.png`, `reward_curve.json` and `manifest.json`. `--clip_model tiny`
uses a tiny CLIP with RANDOM weights (its curves show the plumbing, not a meaningful reward).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmreward.cli import ScriptParser, run
from mmreward.errors import UsageError

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first GL context

if TYPE_CHECKING:
    from vlm_rm.pose_frames import PoseFrameSet

STAGE = "humanoid_reward_curve"
TINY = "tiny"


@dataclass
class RewardCurveConfig:
    """Settings of the reward-curve evaluation."""

    output_dir: str = "runs/humanoid_reward_curve"
    clip_model: str = field(default=TINY, metadata={"help": "open_clip name, local model dir, or 'tiny' (random)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "pretrained tag or local weights file"})
    tasks: list[str] = field(default_factory=lambda: ["kneeling"], metadata={"help": "poses of vlm_rm.poses"})
    goal_prompts: list[str] | None = field(default=None, metadata={
        "help": "goal prompts of a single task (default: each task's paper prompt)"})
    baseline_prompts: list[str] | None = field(default=None, metadata={
        "help": "baseline prompts (default: the paper's, vlm_rm.poses.PAPER_BASELINE_PROMPT)"})
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    renormalize_means: bool = False
    start_pose: str = "standing"
    num_points: int = field(default=21, metadata={"help": "frames along each trajectory (ends included)"})
    heldout_trajectories_per_pose: int = field(default=0, metadata={
        "help": "held-out perturbed trajectories per pose for AUC / EPIC (0: use the scripted trajectories)"})
    heldout_seed: int = 1
    scene: str = field(default="paper", metadata={"help": "scene of the frames (vlm_rm.envs.SCENES)"})
    render_size: int = field(default=0, metadata={"help": "0 = the CLIP input size"})
    device: str = "cpu"
    seed: int = 0

    def validate(self) -> None:
        from vlm_rm.envs import SCENES
        from vlm_rm.poses import REFERENCE_POSES

        for pose in [self.start_pose, *self.tasks]:
            if pose not in REFERENCE_POSES:
                raise UsageError(f"unknown pose {pose!r}; known: {', '.join(REFERENCE_POSES)}")
        if not self.tasks:
            raise UsageError("no tasks given")
        if self.goal_prompts is not None and len(self.tasks) != 1:
            raise UsageError(f"--goal_prompts applies to a single task, got tasks {self.tasks}")
        if self.num_points < 2:
            raise UsageError(f"num_points must be at least 2, got {self.num_points}")
        if self.scene not in SCENES:
            raise UsageError(f"scene must be one of {SCENES}, got {self.scene!r}")


def check_inputs(cfg: RewardCurveConfig) -> None:
    """Settings, the CLIP model and the output folder, before any model is loaded or frame rendered."""
    from mmreward.backbones.clip import check_clip_source
    from mmreward.manifest import check_run_dir

    cfg.validate()
    if cfg.clip_model != TINY:
        check_clip_source(cfg.clip_model, cfg.clip_pretrained)
    check_run_dir(cfg.output_dir, STAGE)


def plot_curves(scripted: PoseFrameSet, tasks: list[str], rewards: dict, measures: dict, path: Path,
                title: str) -> None:
    """One panel per task: reward along its trajectory per alpha (min-max scaled), success shaded."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, (episode, task) in zip(axes.flat, enumerate(tasks)):
        frames = scripted.episode == episode
        fractions = np.linspace(0.0, 1.0, int(frames.sum()))
        half_step = 0.5 / (len(fractions) - 1)
        for fraction, ok in zip(fractions, scripted.holds(task)[frames]):
            if ok:
                ax.axvspan(fraction - half_step, fraction + half_step, color="green", alpha=0.1, lw=0)
        for alpha, values in rewards[task].items():
            curve = values[frames]
            span = curve.max() - curve.min()
            ax.plot(fractions, (curve - curve.min()) / span if span > 0 else curve * 0, marker=".", ms=3,
                    label=f"alpha={alpha:g}")
        epic, auc = measures[task]["epic"].get("0"), measures[task]["auc"].get("0")
        ax.set_title(task if epic is None else f"{task}: EPIC {epic:.2f}, AUC {auc:.2f} (alpha 0)", fontsize=8)
        ax.set(xlabel="trajectory fraction", ylabel="reward (min-max scaled)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_strips(scripted: PoseFrameSet, path: Path, count: int = 6) -> None:
    """One row of `count` frames along each trajectory."""
    import numpy as np
    from PIL import Image

    rows = []
    for episode in np.unique(scripted.episode):
        frames = scripted.frames[scripted.episode == episode]
        picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
        rows.append(np.concatenate([frames[i] for i in picks], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def evaluate(cfg: RewardCurveConfig) -> dict:
    """Render, score and measure; returns the manifest."""
    import numpy as np

    from mmreward.backbones.clip import build_tiny_clip
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vlm_rm.envs import TexturedHumanoidEnv
    from vlm_rm.pose_frames import PoseFrameConfig, render_pose_frames, scripted_trajectories
    from vlm_rm.poses import PAPER_BASELINE_PROMPT
    from vlm_rm.reward_eval import evaluate_tasks, load_task_rewards, task_rewards

    baseline_prompts = cfg.baseline_prompts or [PAPER_BASELINE_PROMPT]
    out = start_run_dir(cfg.output_dir, STAGE)
    model_name, pretrained = cfg.clip_model, cfg.clip_pretrained
    if model_name == TINY:
        model_name, pretrained = str(build_tiny_clip(out / "tiny_clip", seed=cfg.seed)), None
    goal_prompts = {cfg.tasks[0]: cfg.goal_prompts} if cfg.goal_prompts else None
    rewards_by_task = load_task_rewards(model_name, cfg.tasks, pretrained=pretrained, goal_prompts=goal_prompts,
                                        baseline_prompts=baseline_prompts, device=cfg.device,
                                        renormalize_means=cfg.renormalize_means)
    size = cfg.render_size or next(iter(rewards_by_task.values())).image_size[0]
    env = TexturedHumanoidEnv(render_size=size, scene=cfg.scene)
    env.reset(seed=cfg.seed)
    scripted = scripted_trajectories(env, cfg.tasks, start=cfg.start_pose, num_points=cfg.num_points)
    env.close()
    rewards = task_rewards(rewards_by_task, scripted.frames, cfg.alphas)

    if cfg.heldout_trajectories_per_pose > 0:
        measured_on = "held-out perturbed frames"
        heldout = render_pose_frames(PoseFrameConfig(trajectories_per_pose=cfg.heldout_trajectories_per_pose,
                                                     render_size=size, scene=cfg.scene, seed=cfg.heldout_seed))
        measures = evaluate_tasks(task_rewards(rewards_by_task, heldout.frames, cfg.alphas), heldout)
        frames_measured = len(heldout)
    else:
        measured_on = "scripted trajectories"
        measures = evaluate_tasks(rewards, scripted)
        frames_measured = len(scripted)

    tiny = cfg.clip_model == TINY
    title = f"start {cfg.start_pose} | CLIP {cfg.clip_model}{' (RANDOM weights)' if tiny else ''} | scene {cfg.scene}"
    plot_curves(scripted, cfg.tasks, rewards, measures, out / "reward_curves.png", title)
    save_strips(scripted, out / "frames.png")
    result = {"measured_on": measured_on, "frames_measured": frames_measured, "config": asdict(cfg), "tasks": {}}
    metrics = {}
    for episode, task in enumerate(cfg.tasks):
        frames = scripted.episode == episode
        curves = {a: values[frames] for a, values in rewards[task].items()}
        result["tasks"][task] = {
            "goal_prompts": rewards_by_task[task].goal_prompts,
            "fractions": np.linspace(0.0, 1.0, int(frames.sum())).tolist(),
            "pose_reached": scripted.holds(task)[frames].tolist(),
            "rewards": {f"{a:g}": v.tolist() for a, v in curves.items()},
            **measures[task],
        }
        for a, v in curves.items():
            # How much the reward rises from the start pose to the task's pose.
            metrics[f"{task}/rise_alpha_{a:g}"] = float(v[-1] - v[0])
            metrics[f"{task}/auc_alpha_{a:g}"] = measures[task]["auc"][f"{a:g}"]
            metrics[f"{task}/epic_alpha_{a:g}"] = measures[task]["epic"][f"{a:g}"]
    (out / "reward_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    extra = {"note": "tiny CLIP with RANDOM weights: the curves carry no meaning"} if tiny else None
    inputs = {"clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained, "tasks": cfg.tasks,
              "baseline_prompts": baseline_prompts, "measured_on": measured_on}
    return finalize_run_dir(out, stage=STAGE, inputs=inputs, metrics=metrics, extra=extra)


def summary(out: Path, metrics: dict, tasks: list[str]) -> str:
    """The run's last words: where the figures are and the AUC of each task at alpha 0."""
    values = {task: metrics.get(f"{task}/auc_alpha_0") for task in tasks}
    aucs = ", ".join(f"{task} {'n/a' if v is None else f'{v:.2f}'}" for task, v in values.items())
    return f"done: AUC at alpha 0: {aucs or 'n/a'}; {out}/reward_curves.png, {out}/frames.png, {out}/reward_curve.json"


def main(argv: list[str] | None = None) -> dict:
    (cfg,) = ScriptParser([RewardCurveConfig], __doc__).parse(argv)
    check_inputs(cfg)
    manifest = evaluate(cfg)
    print(summary(Path(cfg.output_dir), manifest["metrics"], cfg.tasks))
    return manifest


if __name__ == "__main__":
    run(main)
