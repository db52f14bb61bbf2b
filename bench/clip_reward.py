"""Benchmark: CLIP-rewarded humanoid env steps per second, batched fast pipeline vs the original way.

- original: 16 envs, each frame rendered at gymnasium's default 480 px with default quality
  (offscreen multisampling, shadows, reflections), resized by the model's PIL transform, one CLIP call
  per env per step;
- batched: the same 16 envs rendering at the CLIP input size with fast settings, frames of all envs
  scored in one CLIP call per step (`VecCLIPReward`, mode "step").

Both arms use the same tiny open_clip model (RANDOM weights, 224 px input, like ViT-bigG-14's) and the
same scene (the paper's, the default). Each arm runs for at least `--seconds` after a warm-up step (GL
contexts, first CLIP call). The last line is `RESULT clip_reward ratio=<batched/original> target=3`.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
from PIL import Image
from stable_baselines3.common.vec_env import DummyVecEnv

from mmreward.backbones.clip import build_tiny_clip
from mmreward.cli import ArgParser, run
from vlm_rm.envs import HumanoidEnvConfig, TexturedHumanoidEnv
from vlm_rm.reward import CLIPReward
from vlm_rm.wrappers import VecCLIPReward, make_rendering_env

TARGET = 3
GOAL, BASELINE = ["a humanoid robot kneeling"], ["a humanoid robot"]


def timed(step, min_seconds: float, min_steps: int) -> tuple[int, float]:
    """Call `step()` until both limits are reached; return (calls, seconds)."""
    step()  # warm-up: GL contexts, allocator, first CLIP call
    calls, start = 0, time.perf_counter()
    while calls < min_steps or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
    return calls, time.perf_counter() - start


def original_arm(reward: CLIPReward, n_envs: int, seconds: float, rng: np.random.Generator) -> float:
    envs = [TexturedHumanoidEnv(render_size=480, fast_render=False) for _ in range(n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    low, high = envs[0].action_space.low, envs[0].action_space.high

    def step() -> None:
        for env in envs:
            env.step(rng.uniform(low, high).astype(np.float32))
            reward([Image.fromarray(env.render())])  # PIL resize 480 -> 224, batch of one

    calls, wall = timed(step, seconds, min_steps=1)
    for env in envs:
        env.close()
    return calls * n_envs / wall


def batched_arm(reward: CLIPReward, n_envs: int, seconds: float, rng: np.random.Generator) -> float:
    config = HumanoidEnvConfig(render_size=reward.image_size[0], max_episode_steps=100)
    venv = VecCLIPReward(DummyVecEnv([lambda: make_rendering_env(config) for _ in range(n_envs)]), reward)
    venv.seed(0)
    venv.reset()
    low, high = venv.action_space.low, venv.action_space.high

    def step() -> None:
        venv.step(rng.uniform(low, high, size=(n_envs, low.shape[0])).astype(np.float32))

    calls, wall = timed(step, seconds, min_steps=3)
    venv.close()
    return calls * n_envs / wall


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per arm")
    parser.add_argument("--torch-threads", type=int, default=1, help="CPU threads for CLIP (both arms)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        reward = CLIPReward.load(build_tiny_clip(tmp), GOAL, BASELINE, alpha=0.0, device=args.device)
    rng = np.random.default_rng(0)
    original = original_arm(reward, args.n_envs, args.seconds, rng)
    batched = batched_arm(reward, args.n_envs, args.seconds, rng)
    print(f"tiny CLIP (random weights), {args.n_envs} envs, device {args.device}, torch threads {args.torch_threads}")
    print(f"original (480 px default render, PIL resize, 1 CLIP call per env): {original:.1f} env-steps/s")
    print(f"batched  ({reward.image_size[0]} px fast render, 1 CLIP call per step):      {batched:.1f} env-steps/s")
    print(f"RESULT clip_reward ratio={batched / original:.2f} target={TARGET}")


if __name__ == "__main__":
    run(main)
