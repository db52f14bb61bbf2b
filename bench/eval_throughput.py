"""Evaluation throughput: length-bucketed batches vs one pair at a time, through the whole runner.

Model: a tiny random Qwen2.5-VL reward model (two dimensions; `--family` picks Qwen2-VL or
Qwen3-VL instead), built offline in a temp dir.
Data: synthetic image pairs (84 px, a different image on each side) carrying text responses of
seeded random length (0 to --max-chars characters, so sequence lengths vary as in response-pair
benchmarks; the tiny tokenizer is byte-level, so 200 characters are 200 tokens, about what 800
characters give with a real Qwen tokenizer). `--shared-image` shows side a's image on both sides,
as in VL-RewardBench-style response pairs (the image is then decoded and encoded once per pair
in every variant). `--modality videos --max-chars 0` times prompt-only video pairs (8 frames per
side) instead.

Each variant runs `run_predictions` end to end (media decoding, collation, the model, JSONL
streaming with fsync) into a fresh directory; pairs/s = pairs / wall time. Variants, interleaved
--repeats times (medians reported):

* baseline: batch size 1, dataset order;
* batched:  batch size --batch-size, dataset order (the scorer still runs each batch's sequences
  in length groups);
* bucketed: batch size --batch-size, pairs ordered by estimated length first (the default).

All variants go through the same public `RewardModelScorer`, which for Qwen2-VL, Qwen2.5-VL and
Qwen3-VL backbones scores with `mmreward.forward.batched.batched_rewards` (vectorised M-RoPE
positions, one attention call per window / frame length in the vision tower, each distinct image
encoded once, length groups without attention masks, the last layer computed only at the read
position) and encodes with `mmreward.evaluation.tensor_processor.TensorProcessor`; batch size 1
gets all of that too.
The predictions of the variants must agree (max |delta difference| <= 1e-4, else it fails).
The RESULT ratio is bucketed pairs/s over baseline pairs/s (wall time); pairs per CPU-second are
printed alongside. torch runs one CPU thread by default: on a shared, oversubscribed machine
multi-threaded kernels spin for cores and slow small batches down far more than large ones,
which would inflate the ratio. What batching cannot amortise on CPU bounds the ratio: media
decoding, the processor's per-image and per-sequence work, and the model's own arithmetic. With
200-character responses the batched model part alone costs about 1.7 ms of the batch-1 run's
~8 ms per pair, and decoding + processing another ~1.3 ms; prompt-only videos spend most of
either run decoding. On a GPU the model part shrinks and batching matters more.

--num-workers N gives every variant N DataLoader workers that decode and collate ahead of the
model (the runner's `num_workers`); on a 2-core machine they compete with the model for cores.

    python bench/eval_throughput.py [--pairs 96] [--batch-size 32] [--repeats 3] [--max-chars 200]
        [--modality images|videos] [--shared-image] [--family qwen2_5_vl] [--threads 1] [--num-workers 0]
        [--device cpu|cuda]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmreward.backbones.tiny import FAMILIES, build_tiny_vlm
from mmreward.cli import ArgParser, run
from mmreward.data.records import read_records, write_records
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.evaluation.runner import RunnerConfig, load_predictions, run_predictions
from mmreward.evaluation.scorers import RewardModelScorer
from mmreward.model import RewardModel

WORDS = "the red circle moves left while a blue square stays still near the top edge".split()


def make_data(root: Path, pairs: int, max_chars: int, modality: str = "images", seed: int = 0,
              shared_image: bool = False) -> Path:
    """Synthetic pairs (images or videos) with responses of random length; returns the records JSONL.

    shared_image: side b shows side a's image (a response pair over one image)."""
    sizes = {"images": SplitSizes(1, 1, 1), "videos": SplitSizes(1, 1, 1), modality: SplitSizes(1, 1, pairs)}
    generate_synthetic(root, seed=seed, config=SyntheticConfig(image_splits=sizes["images"], video_splits=sizes["videos"]))
    rng = np.random.default_rng(seed)
    records = list(read_records(root / modality / "test.jsonl"))

    def response() -> str | None:
        if max_chars == 0:
            return None
        words, n = [], int(rng.integers(0, max_chars))
        while sum(len(w) + 1 for w in words) < n:
            words.append(WORDS[int(rng.integers(len(WORDS)))])
        return " ".join(words)

    for record in records:
        record.a.response, record.b.response = response(), response()
        if shared_image:
            record.b.image = record.a.image
    return write_records(root / modality / "with_responses.jsonl", records)


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-chars", type=int, default=200, help="longest response (0: prompt only)")
    parser.add_argument("--modality", choices=["images", "videos"], default="images")
    parser.add_argument("--shared-image", action="store_true",
                        help="both sides of a pair show the same image (VL-RewardBench-style response pairs)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="tiny backbone family")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers that decode and collate ahead of the model (all variants)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: timings stay stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.shared_image and args.modality != "images":
            parser.error("--shared-image needs --modality images")
        data = make_data(root / "data", args.pairs, args.max_chars, args.modality, shared_image=args.shared_image)
        records = list(read_records(data))
        backbone = build_tiny_vlm(root / "vlm", family=args.family)
        RewardModel.from_backbone(backbone, dimensions=["VQ", "TA"]).save_pretrained(root / "rm")
        scorer = RewardModelScorer.from_pretrained(root / "rm", device=args.device)
        variants = {
            "baseline (batch 1)": RunnerConfig(batch_size=1, bucket_by_length=False, num_workers=args.num_workers),
            f"batched (batch {args.batch_size}, dataset order)": RunnerConfig(
                batch_size=args.batch_size, bucket_by_length=False, num_workers=args.num_workers),
            f"bucketed (batch {args.batch_size}, by length)": RunnerConfig(
                batch_size=args.batch_size, num_workers=args.num_workers),
        }
        run_predictions(records[: args.batch_size], scorer, root / "warmup", variants[list(variants)[-1]], state=state)

        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, list[dict]] = {}
        for rep in range(args.repeats):
            for i, (name, cfg) in enumerate(variants.items()):  # interleaved: other load hits all alike
                out = root / f"run-{rep}-{i}"
                if args.device != "cpu":
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                run_predictions(records, scorer, out, cfg, state=state)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                outputs[name] = load_predictions(out)

    reference = outputs["baseline (batch 1)"]
    worst = max(
        abs(row["delta"][dim] - ref["delta"][dim])
        for rows in outputs.values() for row, ref in zip(rows, reference) for dim in ref["delta"]
    )
    rates = {name: args.pairs / statistics.median(ts) for name, ts in times.items()}
    cpu_rates = {name: args.pairs / statistics.median(ts) for name, ts in cpu.items()}
    shared = ", one image per pair" if args.shared_image else ""
    print(f"{args.family}: {args.pairs} {args.modality} pairs{shared}, responses 0-{args.max_chars} chars, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, {args.repeats} repeats (medians)")
    for name, ts in times.items():
        print(f"{name:<42} {rates[name]:7.2f} pairs/s wall {[round(t, 1) for t in ts]} s; "
              f"{cpu_rates[name]:7.2f} pairs/cpu-s")
    print(f"max |delta difference| between variants: {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("batched predictions differ from batch-size-1 predictions")
    base, batched, bucketed = (rates[name] for name in variants)
    base_cpu, _, bucketed_cpu = (cpu_rates[name] for name in variants)
    print(f"batched / baseline {batched / base:.2f}; bucketed / batched {bucketed / batched:.2f}; "
          f"bucketed / baseline in CPU time {bucketed_cpu / base_cpu:.2f}")
    print(f"RESULT eval_throughput ratio={bucketed / base:.2f} target=3")


if __name__ == "__main__":
    run(main)
