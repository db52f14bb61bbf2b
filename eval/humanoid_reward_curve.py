"""CLIP reward along a scripted humanoid trajectory between two poses, for a sweep of alpha.

    python eval/humanoid_reward_curve.py --clip_model tiny --output_dir runs/reward_curve
    python eval/humanoid_reward_curve.py --clip_model ViT-bigG-14 --clip_pretrained /path/bigG.bin \\
        --start_pose standing --end_pose kneeling --goal_prompts "a humanoid robot kneeling"

The trajectory blends the joint angles of two constructed poses (vlm_rm.poses.REFERENCE_POSES) and
keeps the body on the floor. Each frame is rendered in the textured scene and embedded once; the
reward for every alpha comes from those embeddings. A good reward rises towards the goal pose; the
plot shades where the end pose's success check holds. Writes `reward_curve.png`, `frames.png`,
`reward_curve.json` and `manifest.json`. `--clip_model tiny` uses a tiny CLIP with RANDOM weights
(its curve shows the plumbing, not a meaningful reward).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
from trl import TrlParser

from mmreward.backbones.clip import build_tiny_clip
from mmreward.manifest import finalize_run_dir, start_run_dir
from vlm_rm.envs import TexturedHumanoidEnv
from vlm_rm.poses import REFERENCE_POSES, check_pose, interpolate_qpos, reference_qpos
from vlm_rm.reward import CLIPReward, projection_reward

STAGE = "humanoid_reward_curve"
TINY = "tiny"


@dataclass
class RewardCurveConfig:
    output_dir: str = "runs/humanoid_reward_curve"
    clip_model: str = field(default=TINY, metadata={"help": "open_clip name, local model dir, or 'tiny' (random)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "pretrained tag or local weights file"})
    goal_prompts: list[str] = field(default_factory=lambda: ["a humanoid robot kneeling"])
    baseline_prompts: list[str] = field(default_factory=lambda: ["a humanoid robot"])
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    renormalize_means: bool = False
    start_pose: str = "standing"
    end_pose: str = "kneeling"
    num_points: int = field(default=21, metadata={"help": "frames along the trajectory (ends included)"})
    render_size: int = field(default=0, metadata={"help": "0 = the CLIP input size"})
    device: str = "cpu"
    seed: int = 0


def trajectory_frames(env: TexturedHumanoidEnv, start: str, end: str, num_points: int) -> tuple[np.ndarray, list[bool]]:
    """Frames [num_points, S, S, 3] from `start` to `end` and whether each shows the end pose."""
    model = env.model
    q_start, q_end = reference_qpos(model, start), reference_qpos(model, end)
    frames, reached = [], []
    zero_vel = np.zeros(model.nv)
    for fraction in np.linspace(0.0, 1.0, num_points):
        env.set_state(interpolate_qpos(model, q_start, q_end, fraction), zero_vel)
        frames.append(env.render())
        reached.append(bool(check_pose(end, model, env.data)))
    return np.stack(frames), reached


def plot_curves(fractions: np.ndarray, curves: dict[float, np.ndarray], reached: list[bool], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for alpha, values in curves.items():
        span = values.max() - values.min()
        axes[0].plot(fractions, values, marker=".", label=f"alpha={alpha:g}")
        axes[1].plot(fractions, (values - values.min()) / span if span > 0 else values * 0, marker=".")
    for ax, ylabel in zip(axes, ("CLIP reward", "reward, min-max scaled per alpha")):
        for frac, ok in zip(fractions, reached):
            if ok:
                ax.axvspan(frac - 0.5 / (len(fractions) - 1), frac + 0.5 / (len(fractions) - 1), color="green", alpha=0.08)
        ax.set(xlabel="trajectory fraction (start pose -> end pose)", ylabel=ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_strip(frames: np.ndarray, path: Path, count: int = 6) -> None:
    from PIL import Image

    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    Image.fromarray(np.concatenate([frames[i] for i in picks], axis=1)).save(path)


def run(cfg: RewardCurveConfig) -> dict:
    for pose in (cfg.start_pose, cfg.end_pose):
        if pose not in REFERENCE_POSES:
            raise ValueError(f"unknown pose {pose!r}; known: {', '.join(REFERENCE_POSES)}")
    if cfg.num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {cfg.num_points}")
    out = start_run_dir(cfg.output_dir)
    model_name, pretrained = cfg.clip_model, cfg.clip_pretrained
    if model_name == TINY:
        model_name, pretrained = str(build_tiny_clip(out / "tiny_clip", seed=cfg.seed)), None
    reward = CLIPReward.load(model_name, cfg.goal_prompts, cfg.baseline_prompts, pretrained=pretrained,
                             device=cfg.device, renormalize_means=cfg.renormalize_means)
    env = TexturedHumanoidEnv(render_size=cfg.render_size or reward.image_size[0])
    env.reset(seed=cfg.seed)
    frames, reached = trajectory_frames(env, cfg.start_pose, cfg.end_pose, cfg.num_points)
    env.close()

    embeddings = reward.embed_frames(frames)
    with torch.no_grad():
        curves = {a: projection_reward(embeddings, reward.goal, reward.baseline, a).cpu().numpy() for a in cfg.alphas}
    fractions = np.linspace(0.0, 1.0, cfg.num_points)
    tiny = cfg.clip_model == TINY
    title = (f"{cfg.start_pose} -> {cfg.end_pose} | goal {cfg.goal_prompts[0]!r} | CLIP {cfg.clip_model}"
             f"{' (RANDOM weights)' if tiny else ''}")
    plot_curves(fractions, curves, reached, out / "reward_curve.png", title)
    save_strip(frames, out / "frames.png")
    result = {
        "fractions": fractions.tolist(),
        "end_pose_reached": reached,
        "rewards": {f"{a:g}": v.tolist() for a, v in curves.items()},
        "config": asdict(cfg),
    }
    (out / "reward_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    # How much the reward rises from the start pose to the end pose, per alpha.
    metrics = {f"rise_alpha_{a:g}": float(v[-1] - v[0]) for a, v in curves.items()}
    extra = {"note": "tiny CLIP with RANDOM weights: the curve carries no meaning"} if tiny else None
    inputs = {"clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
              "goal_prompts": cfg.goal_prompts, "baseline_prompts": cfg.baseline_prompts}
    return finalize_run_dir(out, stage=STAGE, inputs=inputs, metrics=metrics, extra=extra)


def main(argv: list[str] | None = None) -> dict:
    (cfg,) = TrlParser(dataclass_types=[RewardCurveConfig]).parse_args_and_config(argv)
    manifest = run(cfg)
    print(json.dumps(manifest["metrics"], indent=2))
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
