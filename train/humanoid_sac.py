"""Train a MuJoCo humanoid with SAC on a zero-shot CLIP reward (VLM-RM).

    python train/humanoid_sac.py --config train/configs/humanoid_sac_cpu.yaml      # ~1 min on CPU
    python train/humanoid_sac.py --config train/configs/humanoid_sac_paper.yaml \\
        --clip_pretrained /path/to/ViT-bigG-14/open_clip_pytorch_model.bin          # GPU, paper scale
    ... --resume true                                                               # continue a run

The output directory gets: `tensorboard/` logs, `videos/eval_<steps>.mp4` (one evaluation episode each
time), `reward_curve.png` + `eval_history.json` (CLIP return and pose success rate over training),
`checkpoints/` (SB3 zips, optionally the replay buffer as .npz; written atomically and loaded without
unpickling, see `vlm_rm.sac_checkpoint`), the final `model.zip`, `config.yaml` and
`manifest.json` (stage, inputs, metrics). `clip_model: tiny` builds a tiny CLIP with RANDOM weights
into the output directory: it exercises the pipeline, its rewards mean nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmreward.cli import ScriptParser, run
from mmreward.errors import MissingInputError, UsageError

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first GL context

if TYPE_CHECKING:
    from stable_baselines3 import SAC

    from vlm_rm.envs import HumanoidEnvConfig
    from vlm_rm.reward import CLIPReward

STAGE = "humanoid_sac"
TINY = "tiny"


@dataclass
class HumanoidSACConfig:
    """All settings of a run (YAML via --config, any field overridable as --field value)."""

    output_dir: str = field(default="runs/humanoid_sac", metadata={"help": "run directory"})
    # CLIP reward
    clip_model: str = field(default="ViT-bigG-14", metadata={
        "help": "open_clip name, local model dir, or 'tiny' (random-weight tiny CLIP built offline)"})
    clip_pretrained: str | None = field(default=None, metadata={
        "help": "pretrained tag (downloads, e.g. laion2b_s39b_b160k) or local weights file"})
    goal_prompts: list[str] = field(default_factory=lambda: ["a humanoid robot kneeling"])
    baseline_prompts: list[str] = field(default_factory=lambda: ["a humanoid robot"])
    alpha: float = field(default=0.0, metadata={"help": "goal-baseline projection strength (0 = cosine)"})
    renormalize_means: bool = field(default=False, metadata={"help": "unit-normalise prompt means"})
    clip_batch_size: int = field(default=64, metadata={"help": "frames per CLIP forward pass"})
    reward_mode: str = field(default="step", metadata={
        "help": "'step': score each step's frames in one batch; 'rollout': score all frames of a rollout "
                "(train_freq steps x n_envs) when it ends and relabel the replay buffer"})
    pose: str | None = field(default=None, metadata={
        "help": "pose check for the success rate (vlm_rm.poses); default: looked up from the goal prompt"})
    # environment
    n_envs: int = 32
    vec_env: str = field(default="dummy", metadata={"help": "'dummy' (one process) or 'subproc'"})
    episode_length: int = 100
    render_size: int = field(default=0, metadata={"help": "frame side in pixels; 0 = the CLIP input size"})
    scene: str = field(default="paper", metadata={
        "help": "'paper' (the VLM-RM paper's textures and light), 'procedural' (builtin textures) or 'plain' "
                "(gymnasium's scene)"})
    render_path: str = field(default="direct", metadata={
        "help": "'direct': render at the CLIP input size, fast settings; 'paper': render 480 px at default "
                "quality, then resize (as the paper)"})
    camera_distance: float = 3.5
    camera_elevation: float = -10.0
    camera_azimuth: float = 180.0
    # SAC (paper values as defaults)
    total_timesteps: int = 10_000_000
    learning_rate: float = 6e-4
    batch_size: int = 512
    tau: float = 0.005
    gamma: float = 0.95
    train_freq: int = 100
    gradient_steps: int = 100
    learning_starts: int = 50_000
    buffer_size: int = 1_000_000
    ent_coef: str = "auto"
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda[:i]' (CLIP and SAC)"})
    torch_threads: int = field(default=0, metadata={
        "help": "torch CPU threads; 0 keeps torch's default (1 avoids thread thrashing on busy small CPUs)"})
    # evaluation / checkpoints
    eval_freq: int = field(default=100_000, metadata={"help": "env steps between evaluations"})
    eval_episodes: int = 4
    checkpoint_freq: int = field(default=500_000, metadata={"help": "env steps between checkpoints"})
    save_replay_buffer: bool = field(default=False, metadata={
        "help": "store the replay buffer with checkpoints (GBs at paper scale; makes resume exact)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint"})

    def validate(self) -> None:
        from vlm_rm.envs import RENDER_PATHS, SCENES

        if self.reward_mode not in ("step", "rollout"):
            raise UsageError(f"reward_mode must be 'step' or 'rollout', got {self.reward_mode!r}")
        if self.scene not in SCENES:
            raise UsageError(f"scene must be one of {SCENES}, got {self.scene!r}")
        if self.render_path not in RENDER_PATHS:
            raise UsageError(f"render_path must be one of {RENDER_PATHS}, got {self.render_path!r}")
        if self.vec_env not in ("dummy", "subproc"):
            raise UsageError(f"vec_env must be 'dummy' or 'subproc', got {self.vec_env!r}")
        for name in ("n_envs", "episode_length", "total_timesteps", "eval_freq", "eval_episodes", "checkpoint_freq"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")


def check_inputs(cfg: HumanoidSACConfig) -> tuple[Path, int] | None:
    """Settings, the CLIP model, the pose and the output folder (with the checkpoint `--resume` continues
    from), before any model is loaded or env built. Returns that checkpoint (path, steps) or None."""
    from mmreward.backbones.clip import check_clip_source
    from mmreward.manifest import check_run_dir
    from vlm_rm.poses import POSE_NAMES
    from vlm_rm.sac_checkpoint import latest_sac_checkpoint

    cfg.validate()
    if cfg.clip_model != TINY:
        check_clip_source(cfg.clip_model, cfg.clip_pretrained)
    if cfg.pose is not None and cfg.pose not in POSE_NAMES:
        raise UsageError(f"--pose {cfg.pose!r}: known poses are {', '.join(POSE_NAMES)}")
    check_run_dir(cfg.output_dir, STAGE)
    out = Path(cfg.output_dir)
    resume_from = latest_sac_checkpoint(out / "checkpoints") if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise MissingInputError(f"{out / 'checkpoints'}: --resume given but no sac_<steps>_steps.zip checkpoint "
                                "found")
    return resume_from


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_reward(cfg: HumanoidSACConfig, out: Path, device: str) -> CLIPReward:
    from mmreward.backbones.clip import build_tiny_clip
    from vlm_rm.reward import CLIPReward

    model_name, pretrained = cfg.clip_model, cfg.clip_pretrained
    if model_name == TINY:
        model_name, pretrained = str(build_tiny_clip(out / "tiny_clip", seed=cfg.seed)), None
    return CLIPReward.load(
        model_name, cfg.goal_prompts, cfg.baseline_prompts, cfg.alpha, pretrained=pretrained, device=device,
        renormalize_means=cfg.renormalize_means, batch_size=cfg.clip_batch_size,
    )


def env_config(cfg: HumanoidSACConfig, reward: CLIPReward) -> HumanoidEnvConfig:
    from vlm_rm.envs import CameraConfig, HumanoidEnvConfig

    size = cfg.render_size or reward.image_size[0]
    camera = CameraConfig(distance=cfg.camera_distance, elevation=cfg.camera_elevation, azimuth=cfg.camera_azimuth)
    return HumanoidEnvConfig(render_size=size, max_episode_steps=cfg.episode_length, scene=cfg.scene,
                             render_path=cfg.render_path, camera=camera)


def run_episodes(model: SAC, env, reward: CLIPReward, episodes: int, pose: str | None, seed: int) -> dict:
    """Deterministic policy episodes; frames scored in one batch per episode. Returns metrics + frames
    of the first episode (reset frame included)."""
    import numpy as np

    from vlm_rm.poses import check_pose
    from vlm_rm.wrappers import FRAME_KEY

    returns, successes, video = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        frames = []
        if episode == 0:
            video.append(env.render())
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            frames.append(info[FRAME_KEY])
            done = terminated or truncated
        returns.append(float(reward(np.stack(frames)).sum()))
        if pose is not None:
            base = env.unwrapped
            successes.append(bool(check_pose(pose, base.model, base.data)))
        if episode == 0:
            video.extend(frames)
    return {
        "clip_return_mean": float(np.mean(returns)),
        "clip_return_std": float(np.std(returns)),
        "success_rate": float(np.mean(successes)) if successes else None,
        "frames": video,
    }


def plot_reward_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    with_success = [h for h in history if h["success_rate"] is not None]
    fig, axes = plt.subplots(1, 2 if with_success else 1, figsize=(10 if with_success else 5, 3.5), squeeze=False)
    axes[0, 0].errorbar(steps, [h["clip_return_mean"] for h in history],
                        yerr=[h["clip_return_std"] for h in history], marker="o", capsize=3)
    axes[0, 0].set(xlabel="env steps", ylabel="episode CLIP return", title="evaluation return")
    if with_success:
        axes[0, 1].plot([h["step"] for h in with_success], [h["success_rate"] for h in with_success], marker="o")
        axes[0, 1].set(xlabel="env steps", ylabel="success rate", ylim=(-0.05, 1.05), title="pose success")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def eval_callback(cfg: HumanoidSACConfig, out: Path, reward: CLIPReward, env_cfg: HumanoidEnvConfig,
                  pose: str | None, history: list[dict], title: str):
    """The SB3 callback that evaluates every `eval_freq` env steps (SB3 imported only here, after parsing)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from vlm_rm.video import write_mp4
    from vlm_rm.wrappers import make_rendering_env

    class EvalCallback(BaseCallback):
        """Every `eval_freq` env steps: evaluation episodes, an MP4, TensorBoard scalars and the curve PNG."""

        def __init__(self, cfg: HumanoidSACConfig, out: Path, reward: CLIPReward, env_cfg: HumanoidEnvConfig,
                     pose: str | None, history: list[dict], title: str) -> None:
            super().__init__()
            self.cfg, self.out, self.reward, self.pose, self.history, self.title = cfg, out, reward, pose, history, title
            self.env = make_rendering_env(env_cfg)
            self.fps = self.env.unwrapped.metadata["render_fps"]
            self.next_eval = (history[-1]["step"] if history else 0) + cfg.eval_freq

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.evaluate()
                self.next_eval = self.num_timesteps + self.cfg.eval_freq
            return True

        def evaluate(self) -> dict:
            result = run_episodes(self.model, self.env, self.reward, self.cfg.eval_episodes, self.pose, self.cfg.seed + 10_000)
            video = write_mp4(self.out / "videos" / f"eval_{self.num_timesteps:09d}.mp4", result.pop("frames"), fps=self.fps)
            entry = {"step": int(self.num_timesteps), **result, "video": video.relative_to(self.out).as_posix()}
            if self.history and self.history[-1]["step"] == entry["step"]:
                self.history.pop()
            self.history.append(entry)
            self.logger.record("eval/clip_return", result["clip_return_mean"])
            if result["success_rate"] is not None:
                self.logger.record("eval/success_rate", result["success_rate"])
            (self.out / "eval_history.json").write_text(json.dumps(self.history, indent=2) + "\n")
            plot_reward_curve(self.history, self.out / "reward_curve.png", self.title)
            return entry

        def _on_training_end(self) -> None:
            if not self.history or self.history[-1]["step"] != self.num_timesteps:
                self.evaluate()
            self.env.close()

    return EvalCallback(cfg, out, reward, env_cfg, pose, history, title)


def train(cfg: HumanoidSACConfig, resume_from: tuple[Path, int] | None = None) -> dict:
    """The SAC run of a checked config (`check_inputs`); returns the manifest."""
    import torch
    import yaml
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import VecMonitor

    from mmreward.backbones.clip import local_clip_note
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vlm_rm.poses import pose_for_prompt
    from vlm_rm.sac_checkpoint import SACCheckpointCallback, load_sac_checkpoint, save_sac_checkpoint
    from vlm_rm.wrappers import RelabelRewardsCallback, make_reward_vec_env

    out = Path(cfg.output_dir)
    start_run_dir(out, STAGE)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    device = resolve_device(cfg.device)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)

    reward = build_reward(cfg, out, device)
    env_cfg = env_config(cfg, reward)
    pose = cfg.pose or pose_for_prompt(cfg.goal_prompts[0])
    clip_venv = make_reward_vec_env(env_cfg, cfg.n_envs, reward, mode=cfg.reward_mode, vec_env=cfg.vec_env,
                                    seed=cfg.seed)
    venv = VecMonitor(clip_venv)

    history: list[dict] = []
    model = SAC(
        "MlpPolicy", venv, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
        learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps, ent_coef=cfg.ent_coef,
        policy_kwargs={"net_arch": list(cfg.net_arch)}, tensorboard_log=str(out / "tensorboard"),
        seed=cfg.seed, device=device, verbose=0,
    )
    if resume_from is not None:
        # The fresh model supplies what SB3 would otherwise unpickle from the zip (see vlm_rm.sac_checkpoint).
        model = load_sac_checkpoint(resume_from[0], model, resume_from[1], tensorboard_log=str(out / "tensorboard"))
        old = out / "eval_history.json"
        if old.exists():
            history = [h for h in json.loads(old.read_text()) if h["step"] <= model.num_timesteps]
    tiny = cfg.clip_model == TINY
    title = f"{cfg.goal_prompts[0]!r} | CLIP {cfg.clip_model}{' (RANDOM weights)' if tiny else ''} | alpha {cfg.alpha}"
    evaluator = eval_callback(cfg, out, reward, env_cfg, pose, history, title)
    callbacks = [
        SACCheckpointCallback(out / "checkpoints", every=cfg.checkpoint_freq, with_buffer=cfg.save_replay_buffer),
        evaluator,
    ]
    if cfg.reward_mode == "rollout":
        callbacks.insert(0, RelabelRewardsCallback(clip_venv))

    start_steps = model.num_timesteps
    started = time.perf_counter()
    model.learn(total_timesteps=max(cfg.total_timesteps - start_steps, 0), callback=CallbackList(callbacks),
                reset_num_timesteps=resume_from is None, tb_log_name="sac")
    wall = time.perf_counter() - started
    model.save(out / "model.zip")
    # A final checkpoint so `--resume` continues from here even off the checkpoint schedule.
    save_sac_checkpoint(model, out / "checkpoints", with_buffer=cfg.save_replay_buffer)
    venv.close()

    final = history[-1]
    metrics = {
        "env_steps": int(model.num_timesteps),
        "env_steps_this_run": int(model.num_timesteps - start_steps),
        "replay_buffer_steps": int(model.replay_buffer.size()),  # vector steps stored (n_envs transitions each)
        "wall_s": round(wall, 2),
        "env_steps_per_s": round((model.num_timesteps - start_steps) / wall, 2) if wall > 0 else None,
        "eval_clip_return": final["clip_return_mean"],
        "eval_success_rate": final["success_rate"],
        "pose": pose,
        "clip_random_weights": tiny,
    }
    inputs = {
        "clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
        "goal_prompts": cfg.goal_prompts, "baseline_prompts": cfg.baseline_prompts, "alpha": cfg.alpha,
        "resumed_from": str(resume_from[0]) if resume_from else None,
    }
    extra = {"note": "tiny CLIP with RANDOM weights: rewards and success carry no meaning"} if tiny else None
    if not tiny and local_clip_note(cfg.clip_model):  # e.g. the stand-in CLIP's "NOT zero-shot"
        extra = {"clip_note": local_clip_note(cfg.clip_model)}
    return finalize_run_dir(out, stage=STAGE, inputs=inputs, metrics=metrics, extra=extra)


def summary(out: Path, metrics: dict) -> str:
    """The run's last words: where its outputs are and its main figures."""
    success = metrics["eval_success_rate"]
    return (f"done: {metrics['env_steps']} env steps ({metrics['env_steps_per_s']} per s); evaluation CLIP return "
            f"{metrics['eval_clip_return']:.3f}, {metrics['pose']} success rate "
            f"{'n/a' if success is None else f'{success:.2f}'}; run in {out} (reward_curve.png, videos/, model.zip)")


def main(argv: list[str] | None = None) -> dict:
    (cfg,) = ScriptParser([HumanoidSACConfig], __doc__).parse(argv)
    resume_from = check_inputs(cfg)
    manifest = train(cfg, resume_from)
    print(summary(Path(cfg.output_dir), manifest["metrics"]))
    return manifest


if __name__ == "__main__":
    run(main)
