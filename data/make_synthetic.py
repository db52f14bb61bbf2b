"""Write the seeded synthetic preference set (images + videos, train/val/test) to a folder.

    python data/make_synthetic.py --out runs/synthetic --seed 0
    python data/make_synthetic.py --out /tmp/syn --image-sizes 64,16,16 --video-sizes 16,8,8

The set and the record format are described in data/FORMATS.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from mmreward.cli import ArgParser, run
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic


def _sizes(text: str) -> SplitSizes:
    try:
        train, val, test = (int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected three integers train,val,test, got {text!r}") from err
    return SplitSizes(train, val, test)


def main(argv: list[str] | None = None) -> dict:
    defaults = SyntheticConfig()
    parser = ArgParser(__doc__)
    parser.add_argument("--out", required=True, help="output folder (created; files of the same name are overwritten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-sizes", type=_sizes, default=defaults.image_splits, help="image pairs: train,val,test")
    parser.add_argument("--video-sizes", type=_sizes, default=defaults.video_splits, help="video pairs: train,val,test")
    parser.add_argument("--tie-share", type=float, default=defaults.tie_share, help="share of all-tie pairs")
    parser.add_argument("--mixed-share", type=float, default=defaults.mixed_share, help="share of two-dimension pairs")
    args = parser.parse_args(argv)
    config = replace(
        defaults,
        image_splits=args.image_sizes,
        video_splits=args.video_sizes,
        tie_share=args.tie_share,
        mixed_share=args.mixed_share,
    )
    start = time.perf_counter()
    paths = generate_synthetic(args.out, seed=args.seed, config=config)
    for key, path in paths.items():
        print(f"{key:14s} {path}")
    print(f"done in {time.perf_counter() - start:.1f}s: wrote {args.out}")
    return paths


if __name__ == "__main__":
    run(main)
