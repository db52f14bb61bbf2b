"""Multimodal RewardBench (facebookresearch/multimodal_rewardbench): ``data/all_data.json``.

The JSON array that the benchmark's ``scripts/0_download_data.py`` completes (it fills ``Text``
and fetches the images). Fields used: ``ID``, ``Text`` (the prompt), ``Image`` (relative to the
``data`` folder), ``Output1``, ``Output2`` and ``Better`` (``"Output1"`` or ``"Output2"``).
``Category`` is refined as in the benchmark's ``2_get_accuracy.py``: ``safety`` becomes
``safety/bias`` for ids starting with ``pairs`` and ``safety/toxicity`` otherwise; ``reasoning``
becomes ``reasoning/math`` for ids starting with ``math`` and ``reasoning/coding`` otherwise. The
refined name is ``meta["category"]``; the original fields stay in ``meta``.
"""

from __future__ import annotations

from pathlib import Path

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "all_data.json"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
BETTER = {"Output1": "a", "Output2": "b"}


def category_of(record_id: str, category: str) -> str:
    """The category the benchmark reports a record under."""
    lowered = record_id.lower()
    if category == "safety":
        return "safety/bias" if lowered.startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if lowered.startswith("math") else "reasoning/coding"
    return category


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; image paths resolve against ``media_root`` (default: the file's folder)."""
    src, root = resolve_roots(src, media_root)
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        ctx = RowContext(src, where, row)
        ctx.record_id = str(ctx.get("ID", (str, int)))
        image = media_path(ctx, root, ctx.get("Image"))
        derived = {"benchmark": NAME, "source_row": index, "category": category_of(ctx.record_id, ctx.get("Category"))}
        records.append(PreferenceRecord(
            id=ctx.record_id,
            prompt=ctx.get("Text"),
            a=Side(image=image, response=ctx.get("Output1")),
            b=Side(image=image, response=ctx.get("Output2")),
            label={"overall": ctx.label("Better", BETTER)},
            meta=build_meta(row, ["Text", "Output1", "Output2"], derived),
        ))
    return records
