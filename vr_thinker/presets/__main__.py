"""Inspect presets: ``show`` prints the resolved preset and its rendered prompts; ``check-card`` compares them with a
released checkpoint's README.md.

    python -m vr_thinker.presets show vr-thinker [--override frames.per_video=8 ...]
    python -m vr_thinker.presets check-card vr-thinker MODELS/vr-thinker/README.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from vr_thinker.presets import PresetError, load_preset
from vr_thinker.presets.card import check_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vr_thinker.presets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the resolved preset and its first prompt")
    show.add_argument("preset")
    show.add_argument("--override", action="append", default=[], help="key=value (repeatable)")
    card = sub.add_parser("check-card", help="compare the prompt strings with a model card")
    card.add_argument("preset")
    card.add_argument("readme", type=Path)
    args = parser.parse_args(argv)
    try:
        preset = load_preset(args.preset, getattr(args, "override", []))
    except PresetError as err:
        parser.error(str(err))
    if args.command == "show":
        dims = preset.dimensions()
        print(yaml.safe_dump(preset.to_dict(), sort_keys=False, allow_unicode=True))
        print("--- system ---\n" + preset.system_text(dims))
        print("--- first turn ---\n" + preset.first_turn_text("{prompt}", dims))
        return 0
    if not args.readme.is_file():
        parser.error(f"{args.readme}: no such file")
    findings = check_card(preset, args.readme.read_text(encoding="utf-8"))
    for finding in findings:
        print(f"{finding.what}: {'identical' if finding.identical else 'differs: ' + finding.detail}")
    return 0 if all(f.identical for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
