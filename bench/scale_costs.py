"""Costs that used to grow faster than the data: metrics at 100k pairs and large source images.

Each part times today's code against the code path it replaced, measured in the same run:

* metrics: `compute_metrics` on 100k prediction rows (one dimension, a third of the labels ties,
  50k items of two pairs, 1,000 bootstrap resamples: accuracy, accuracy with ties, Acc+) against
  the per-resample loop it replaced (`loop_bootstrap` below: one index array per pair or group,
  concatenated for every resample, groups found by scanning all pairs once per group). The loop
  takes minutes at this size, so it runs --loop-resamples and --loop-resamples + 4 resamples and
  its 1,000-resample time is extrapolated from the difference (setup + 1,000 x per resample). Both
  give the same interval for the same seed (checked on the shared resamples).
* tie curve: `tie_threshold_curve` at 100k pairs against the threshold x pair grid it replaced
  (about 200 x 100k at once); the ratio is the grid's peak memory over the curve's (tracemalloc),
  times are printed alongside.
* images: a photo-like JPEG (default 2016 x 1512, what phones and many benchmarks store) loaded with
  --max_pixels 336 x 336 and encoded by a Qwen2.5-VL image processor with the released model's
  pixel bounds (3,136 to 12,845,056). Baseline, the old path: decode the whole file, resize to the
  cap, let the processor resize again to multiples of 28. Now: `load_image` with the processor's
  size rule decodes the JPEG at reduced scale (draft mode) and resizes once, straight to the size
  the processor keeps. Same grid (checked); pixels within JPEG noise of the baseline (printed).

    python bench/scale_costs.py [--pairs 100000] [--resamples 1000] [--loop-resamples 2]
        [--image-size 2016x1512] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mmreward.cli import ArgParser, run
from mmreward.metrics import (
    ConfidenceInterval,
    acc_plus,
    accuracy_with_ties,
    bootstrap_ci,
    pair_accuracy,
)

QWEN25_VL_PIXELS = (3136, 12845056)  # min / max pixels of the released Qwen2.5-VL image processor


def loop_bootstrap(metric, *arrays, group_by=None, n_resamples=1000, confidence=0.95, seed=0) -> ConfidenceInterval:
    """The bootstrap loop `mmreward.metrics.bootstrap_ci` replaced (the baseline; also the reference
    tests/test_metrics.py checks the vectorised code against)."""
    cols = [np.asarray(a).reshape(-1) for a in arrays]
    estimate = float(metric(*cols))
    rng = np.random.default_rng(seed)
    if group_by is None:
        members = [np.array([i]) for i in range(cols[0].size)]
    else:
        _, inverse = np.unique(cols[group_by], return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    values = []
    for _ in range(n_resamples):
        picks = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[k] for k in picks])
        sample = [c[idx] for c in cols]
        if group_by is not None:
            sample[group_by] = np.repeat(np.arange(picks.size), [members[k].size for k in picks])
        try:
            values.append(float(metric(*sample)))
        except ValueError:
            continue
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return ConfidenceInterval(estimate, float(low), float(high), confidence)


def prediction_rows(pairs: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 0, 1], size=pairs)
    delta = np.round(rng.normal(size=pairs) + 0.4 * labels, 3)  # an informative model; repeated |delta|
    return [{"id": str(i), "item_id": str(i // 2), "labels": {"overall": int(y)}, "delta": {"overall": float(d)}}
            for i, (d, y) in enumerate(zip(delta, labels))]


def bench_metrics(pairs: int, resamples: int, loop_resamples: int) -> None:
    from mmreward.evaluation.report import compute_metrics

    rows = prediction_rows(pairs)
    d = np.array([r["delta"]["overall"] for r in rows])
    y = np.array([r["labels"]["overall"] for r in rows])
    items = np.array([r["item_id"] for r in rows])
    calls = [(pair_accuracy, (d, y), None), (accuracy_with_ties, (d, y), None), (acc_plus, (d, y, items), 2)]

    def loop(n: int) -> tuple[float, list[ConfidenceInterval]]:
        start = time.perf_counter()
        cis = [loop_bootstrap(m, *a, group_by=g, n_resamples=n) for m, a, g in calls]
        return time.perf_counter() - start, cis

    short, _ = loop(loop_resamples)
    longer, loop_cis = loop(loop_resamples + 4)
    per_resample = (longer - short) / 4
    projected = short - loop_resamples * per_resample + resamples * per_resample
    same = loop_cis == [bootstrap_ci(m, *a, group_by=g, n_resamples=loop_resamples + 4) for m, a, g in calls]
    start = time.perf_counter()
    metrics = compute_metrics(rows, n_bootstrap=resamples)
    now = time.perf_counter() - start
    print(f"metrics, {pairs} pairs, {resamples} resamples: compute_metrics {now:.1f} s; the loop "
          f"{per_resample:.3f} s per resample -> {projected:.0f} s projected (measured {short:.1f} s / {longer:.1f} s "
          f"at {loop_resamples} / {loop_resamples + 4}); same intervals on the shared resamples: {same}")
    print(f"  overall accuracy {metrics['dimensions']['overall']['accuracy']}, Acc+ {metrics['acc_plus']}")
    if not same:
        raise SystemExit("the vectorised bootstrap differs from the loop it replaced")
    print(f"RESULT metrics_100k ratio={projected / now:.1f} target=50")


def bench_tie_curve(pairs: int) -> None:
    from mmreward.evaluation.report import tie_threshold_curve

    rng = np.random.default_rng(1)
    d, y = rng.normal(size=pairs), rng.choice([-1, 0, 1], size=pairs)

    thresholds, curve = tie_threshold_curve(d, y)

    def grid_curve() -> np.ndarray:  # the old computation: every threshold against every pair at once
        pred = np.where(np.abs(d)[None, :] <= thresholds[:, None], 0, np.sign(d)[None, :])
        return (pred == y[None, :]).mean(axis=1)

    def measure(fn) -> tuple[float, int]:
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return seconds, peak

    if grid_curve().tolist() != curve.tolist():
        raise SystemExit("the tie curve differs from the grid it replaced")
    old_s, old_peak = measure(grid_curve)
    new_s, new_peak = measure(lambda: tie_threshold_curve(d, y))
    print(f"tie curve, {pairs} pairs: grid {old_s * 1e3:.0f} ms / {old_peak / 1e6:.0f} MB peak; "
          f"sorted counts {new_s * 1e3:.0f} ms / {new_peak / 1e6:.1f} MB peak")
    print(f"RESULT tie_curve_100k_memory ratio={old_peak / new_peak:.1f} target=10")


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, (size[1] // 48, size[0] // 48, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    grain = np.random.default_rng(seed + 1).integers(-12, 13, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(smooth, dtype=np.int64) + grain, 0, 255).astype(np.uint8))


def old_load(path: Path, max_pixels: int) -> Image.Image:
    """The old path: full decode, orientation, RGB, one resize to the cap (the processor resizes again)."""
    with Image.open(path) as img:
        img.load()
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    w, h = rgb.size
    scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
    return rgb.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)


def bench_images(size: tuple[int, int], cap: int, repeats: int) -> None:
    from transformers import AutoProcessor

    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.collate import processor_image_size, processor_media
    from mmreward.data.media import load_image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        low, high = QWEN25_VL_PIXELS
        processor = AutoProcessor.from_pretrained(build_tiny_vlm(root / "vlm", family="qwen2_5_vl"),
                                                  size={"shortest_edge": low, "longest_edge": high})
        rule = processor_image_size(processor)
        path = root / "photo.jpg"
        photo(size).save(path, quality=90)

        def encode(img: Image.Image) -> dict:
            return processor.image_processor(**processor_media([img], []), return_tensors="pt")

        variants = {"old: full decode, two resizes": lambda: encode(old_load(path, cap)),
                    "now: draft decode, one resize": lambda: encode(load_image(path, cap, rule))}
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        outputs = {}
        for _ in range(repeats):
            for name, run in variants.items():  # interleaved: other load on the machine hits both alike
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    old, new = (outputs[name] for name in variants)
    if old["image_grid_thw"].tolist() != new["image_grid_thw"].tolist():
        raise SystemExit("the two paths give the model different image grids")
    diff = (old["pixel_values"] - new["pixel_values"]).abs().mean().item()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_medians = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name, ts in times.items():
        print(f"{name:<32} {medians[name] * 1e3:7.1f} ms wall, {cpu_medians[name] * 1e3:7.1f} ms CPU (medians; "
              f"wall {[round(t * 1e3) for t in ts]})")
    print(f"image {size[0]}x{size[1]} JPEG, max_pixels {cap}: grid {new['image_grid_thw'].tolist()}, "
          f"mean |pixel difference| {diff:.3f} (normalised units)")
    (old_s, new_s), (old_cpu, new_cpu) = medians.values(), cpu_medians.values()
    print(f"old / now in CPU time: {old_cpu / new_cpu:.2f}")
    print(f"RESULT large_image_load ratio={old_s / new_s:.2f} target=2")


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--loop-resamples", type=int, default=2, help="resamples of the slow loop (and 4 more)")
    parser.add_argument("--image-size", default="2016x1512", help="WIDTHxHEIGHT of the source JPEG")
    parser.add_argument("--max-pixels", type=int, default=336 * 336)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bench_metrics(args.pairs, args.resamples, args.loop_resamples)
    bench_tie_curve(args.pairs)
    width, height = (int(v) for v in args.image_size.split("x"))
    bench_images((width, height), args.max_pixels, args.repeats)


if __name__ == "__main__":
    run(main)
