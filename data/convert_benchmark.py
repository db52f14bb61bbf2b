"""Convert a public preference benchmark's local files to mmreward records (JSONL).

    python data/convert_benchmark.py videogen_rewardbench DATA/videogen-rewardbench.csv \\
        --out DATA/records.jsonl

The JSONL stores media paths relative to its own folder and may not point outside it, so put
``--out`` in a folder that contains the benchmark's media (usually the dataset folder itself).
Relative media paths in the source resolve against ``--media-root`` (default: the source file's
folder, or the benchmark's media subfolder of it, e.g. ``videos/`` for MJ-Bench-Video); media embedded in the source (VL-RewardBench's Parquet images) are written to
``--media-out`` (default: ``media/<benchmark>`` next to ``--out``). Benchmarks, their layouts and
how to fetch them: data/FORMATS_BENCHMARKS.md. The summary line counts the labels per value,
the labels left missing because the benchmark's evaluation does not count their value, and the
media files that do not exist yet (``read_records`` refuses them when the JSONL is read back).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mmreward.cli import ArgParser, module_names, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(__doc__)
    parser.add_argument("benchmark", choices=module_names("mmreward.data.formats"), help="benchmark format")
    parser.add_argument("src", type=Path, help="the benchmark file (CSV / JSON / JSONL / Parquet)")
    parser.add_argument("--out", type=Path, required=True, help="records JSONL to write")
    parser.add_argument("--media-root", type=Path, default=None, help="folder the source's media paths start from")
    parser.add_argument("--media-out", type=Path, default=None, help="folder for media embedded in the source")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from mmreward.data.formats import describe_missing_labels, read_benchmark
    from mmreward.data.records import missing_media, write_records

    media_out = args.media_out if args.media_out is not None else args.out.parent / "media" / args.benchmark
    records = read_benchmark(args.benchmark, args.src, media_root=args.media_root, media_out=media_out)
    write_records(args.out, records)
    overall = Counter(r.label.get("overall", "missing") for r in records)
    print(f"wrote {len(records)} records to {args.out} (overall labels: {dict(sorted(overall.items()))})")
    missing_labels = describe_missing_labels(records)
    if missing_labels is not None:
        print(missing_labels)
    referenced, absent = missing_media(records)
    if absent:
        print(f"warning: {len(absent)} of {referenced} media files do not exist yet, e.g. {absent[0][2]}",
              file=sys.stderr)


if __name__ == "__main__":
    run(main)
