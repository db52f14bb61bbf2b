"""Yes-token scoring throughput: batched candidates vs one candidate at a time.

Model: a tiny random Qwen2.5-VL with the `yes_token` head (RewardDance), built offline in a temp dir.
Work: one prompt and --candidates generated images (seeded random sizes between 56 and 112 px, so
sequences differ in length), or 8-frame videos with `--modality videos`, scored as P(yes) by
`YesTokenScorer`:

* baseline: `batch_size=1`, one processor call and one forward per candidate;
* batched:  `batch_size=--batch-size`, candidates sorted by size, left-padded, one processor call
  and one forward per batch.

Arms are interleaved --repeats times; candidates/s is the median. Both arms must give the same
rewards (max |difference| <= 1e-4), else the script fails. torch runs --threads CPU threads (1 by
default: on a busy shared CPU, multi-threaded kernels spin for cores and slow small batches more than
large ones, which would inflate the ratio).

    python bench/yes_token_scoring.py [--candidates 64] [--batch-size 32] [--repeats 3]
        [--modality images|videos] [--threads 1] [--device cpu|cuda]

The last line is `RESULT yes_token_scoring ratio=<batched / baseline candidates per second> target=3`.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.cli import ArgParser, run
from mmreward.data.dataset import SideMedia, frames_clip
from mmreward.heads.yes_token.scoring import YesTokenScorer
from mmreward.model import RewardModel, TuningConfig

TARGET = 3
PROMPT = "two red circles on a light grey background"


def make_candidates(count: int, modality: str, seed: int = 0) -> list[SideMedia]:
    """Seeded random-colour images (56-112 px) or 8-frame videos (56 or 84 px)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if modality == "images":
            size = int(rng.choice([56, 84, 112]))
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            out.append(SideMedia(images=[Image.fromarray(pixels)]))
        else:
            size = int(rng.choice([56, 84]))
            frames = rng.integers(0, 256, size=(8, size, size, 3), dtype=np.uint8)
            out.append(SideMedia(video=frames_clip(frames, fps=8.0)))
    return out


def timed(scorer: YesTokenScorer, candidates: list[SideMedia]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    rewards = scorer.score(PROMPT, candidates)
    return len(candidates) / (time.perf_counter() - start), rewards


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modality", choices=["images", "videos"], default="images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        backbone = build_tiny_vlm(f"{tmp}/tiny", family="qwen2_5_vl")
        model = RewardModel.from_backbone(backbone, head="yes_token", dimensions=["overall"],
                                          tuning=TuningConfig(mode="head"), dtype="float32")
    model.to(args.device).eval()
    candidates = make_candidates(args.candidates, args.modality)
    baseline = YesTokenScorer(model, batch_size=1)
    batched = YesTokenScorer(model, batch_size=args.batch_size)
    timed(batched, candidates[: args.batch_size])  # warm-up (lazy inits, allocator)

    rates: dict[str, list[float]] = {"baseline": [], "batched": []}
    for _ in range(args.repeats):
        rate, base_rewards = timed(baseline, candidates)
        rates["baseline"].append(rate)
        rate, batch_rewards = timed(batched, candidates)
        rates["batched"].append(rate)
        gap = (base_rewards - batch_rewards).abs().max().item()
        if gap > 1e-4:
            raise SystemExit(f"batched rewards differ from one-at-a-time rewards by {gap:.2e} (> 1e-4)")

    base, fast = statistics.median(rates["baseline"]), statistics.median(rates["batched"])
    print(f"device={args.device} modality={args.modality} candidates={args.candidates} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"baseline (one at a time): {base:8.1f} candidates/s   runs: {[round(r, 1) for r in rates['baseline']]}")
    print(f"batched:                  {fast:8.1f} candidates/s   runs: {[round(r, 1) for r in rates['batched']]}")
    print(f"max |reward difference| between the arms: {gap:.2e}")
    print(f"RESULT yes_token_scoring ratio={fast / base:.2f} target={TARGET}")


if __name__ == "__main__":
    run(main)
