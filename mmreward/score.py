"""Score images or videos with a reward model from the command line.

    python -m mmreward.score --model runs/reward_video --prompt "a red ball bouncing" a.mp4 b.mp4
    python -m mmreward.score --model /models/VideoReward --backbone /models/Qwen2-VL-2B-Instruct \\
        --prompt "..." clip.mp4 --json

`--model` is an mmreward checkpoint or a VideoAlign one (e.g. KwaiVGI/VideoReward). Rewards are
normalised when the checkpoint says so (`--normalize` / `--raw` override). Prints a table, or one
JSON object per file with `--json`. A file that cannot be read is reported on stderr with the reason
(the others are still scored) and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mmreward.cli import ArgParser, run
from mmreward.errors import MissingInputError, UsageError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(__doc__, prog="python -m mmreward.score")
    parser.add_argument("files", nargs="+", help="image or video files (videos by suffix)")
    parser.add_argument("--model", required=True, help="reward model checkpoint directory (mmreward or VideoAlign)")
    parser.add_argument("--prompt", required=True, help="the prompt every file is scored against")
    parser.add_argument("--backbone", default=None, help="base backbone for LoRA / head-only / VideoAlign checkpoints")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="z-normalise with the checkpoint's statistics")
    norm.add_argument("--raw", dest="normalize", action="store_false", help="report raw rewards")
    parser.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (the checkpoint's)")
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: cuda if available, else cpu)")
    parser.add_argument("--batch_size", type=int, default=8, help="files per forward pass")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    return parser.parse_args(argv)


def format_table(files: Sequence[str], rows: Sequence[dict[str, float] | None], names: Sequence[str]) -> str:
    """A fixed-width table: one row per file, one column per reward (failed files show "error")."""
    width = max(len(f) for f in files)
    lines = [" ".join([f"{'file':<{width}}", *(f"{n:>10}" for n in names)])]
    for file, row in zip(files, rows):
        cells = [f"{row[n]:>10.4f}" for n in names] if row is not None else [f"{'error':>10}" for _ in names]
        lines.append(" ".join([f"{file:<{width}}", *cells]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code: 0, or 1 when a file could not be scored (the others are printed); errors of the
    model or the command line raise (`run` prints them on one line, exit code 2)."""
    args = parse_args(argv)
    if not Path(args.model).is_dir():
        raise MissingInputError(f"--model {args.model}: no such checkpoint folder")
    import torch

    from mmreward.model import RewardModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = RewardModel.from_pretrained(args.model, backbone_path=args.backbone, dtype=args.dtype).to(device)
    except (OSError, ValueError) as err:  # transformers' own: not a model folder, unknown dtype, ...
        raise UsageError(f"--model {args.model}: {err}") from err
    results = model.reward_items(args.files, args.prompt, normalize=args.normalize, batch_size=args.batch_size)
    rows = [None if isinstance(r, Exception) else r for r in results]
    if args.json:
        for file, row in zip(args.files, rows):
            if row is not None:
                print(json.dumps({"file": file, **row}))
    else:
        print(format_table(args.files, rows, model.output_dimensions))
    failed = [(file, r) for file, r in zip(args.files, results) if isinstance(r, Exception)]
    for file, err in failed:
        print(f"error: {file}: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
