"""Evaluation throughput: length-bucketed batches vs one pair at a time, through the whole runner.

Model: a tiny random Qwen2.5-VL reward model (two dimensions), built offline in a temp dir.
Data: synthetic image pairs (84 px) carrying text responses of seeded random length (0 to
--max-chars characters, so sequence lengths vary as in VL-RewardBench-style response pairs).

Each variant runs `run_predictions` end to end (media decoding, collation, the model, JSONL
streaming with fsync) into a fresh directory; pairs/s = pairs / wall time. Variants, interleaved
--repeats times (medians reported):

* baseline: batch size 1, dataset order;
* batched:  batch size --batch-size, dataset order (padding to the longest pair in each batch);
* bucketed: batch size --batch-size, pairs ordered by estimated length first (the default).

The predictions of the variants must agree (checked: max |delta difference| is printed).
The RESULT ratio is bucketed pairs/s over baseline pairs/s.

    python bench/eval_throughput.py [--pairs 64] [--batch-size 16] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.data.records import read_records, write_records
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.evaluation.runner import RunnerConfig, load_predictions, run_predictions
from mmreward.evaluation.scorers import RewardModelScorer
from mmreward.model import RewardModel

WORDS = "the red circle moves left while a blue square stays still near the top edge".split()


def make_data(root: Path, pairs: int, max_chars: int, seed: int = 0) -> Path:
    """Synthetic image pairs with responses of random length; returns the records JSONL."""
    cfg = SyntheticConfig(image_splits=SplitSizes(1, 1, pairs), video_splits=SplitSizes(1, 1, 1))
    generate_synthetic(root, seed=seed, config=cfg)
    rng = np.random.default_rng(seed)
    records = list(read_records(root / "images" / "test.jsonl"))

    def response() -> str:
        words, n = [], int(rng.integers(0, max_chars))
        while sum(len(w) + 1 for w in words) < n:
            words.append(WORDS[int(rng.integers(len(WORDS)))])
        return " ".join(words)

    for record in records:
        record.a.response, record.b.response = response(), response()
    return write_records(root / "images" / "with_responses.jsonl", records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-chars", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root / "data", args.pairs, args.max_chars)
        records = list(read_records(data))
        RewardModel.from_backbone(build_tiny_vlm(root / "vlm"), dimensions=["VQ", "TA"]).save_pretrained(root / "rm")
        scorer = RewardModelScorer.from_pretrained(root / "rm", device=args.device)
        variants = {
            "baseline (batch 1)": RunnerConfig(batch_size=1, bucket_by_length=False),
            f"batched (batch {args.batch_size}, dataset order)": RunnerConfig(batch_size=args.batch_size, bucket_by_length=False),
            f"bucketed (batch {args.batch_size}, by length)": RunnerConfig(batch_size=args.batch_size),
        }
        run_predictions(records[: args.batch_size], scorer, root / "warmup", variants[list(variants)[-1]], state=state)

        times: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, list[dict]] = {}
        for rep in range(args.repeats):
            for i, (name, cfg) in enumerate(variants.items()):  # interleaved: other load hits all alike
                out = root / f"run-{rep}-{i}"
                if args.device != "cpu":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run_predictions(records, scorer, out, cfg, state=state)
                times[name].append(time.perf_counter() - start)
                outputs[name] = load_predictions(out)

    reference = outputs["baseline (batch 1)"]
    worst = max(
        abs(row["delta"][dim] - ref["delta"][dim])
        for rows in outputs.values() for row, ref in zip(rows, reference) for dim in ref["delta"]
    )
    rates = {name: args.pairs / statistics.median(ts) for name, ts in times.items()}
    print(f"{args.pairs} pairs, responses 0-{args.max_chars} chars, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    for name, ts in times.items():
        print(f"{name:<40} {rates[name]:8.2f} pairs/s   wall {[round(t, 2) for t in ts]} s")
    print(f"max |delta difference| between variants: {worst:.2e}")
    base = rates["baseline (batch 1)"]
    bucketed = rates[list(variants)[-1]]
    print(f"batched / baseline {rates[list(variants)[1]] / base:.2f}; bucketed / batched {bucketed / rates[list(variants)[1]]:.2f}")
    print(f"RESULT eval_throughput ratio={bucketed / base:.2f} target=3")


if __name__ == "__main__":
    main()
