"""The synthetic sets of :mod:`mmreward.data.synthetic`: already records, read as they are.

``src`` is one of the generated JSONL files (``images/test.jsonl``, ``videos/val.jsonl``, ...);
its media paths are relative to its own folder, so ``media_root`` and ``media_out`` do not apply.
"""

from __future__ import annotations

from pathlib import Path

from mmreward.data.records import PreferenceRecord, read_records

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = None  # records JSONL written by data/make_synthetic.py, no released file


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """The validated records of the JSONL file ``src``."""
    if media_root is not None:
        raise ValueError("synthetic records resolve media against their own JSONL folder; media_root does not apply")
    return list(read_records(src))
