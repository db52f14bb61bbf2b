"""MJ-Bench-Video (MJ-Bench/MJ-BENCH-VIDEO ``test.json``, the same file as aiming-lab/MJ-Video's
``datas/test.json``): a JSON array of video pairs.

Fields used: ``caption`` (the prompt), ``video_0_path`` / ``video_1_path`` (e.g. ``test/0_0.mp4``,
relative to the release's ``videos/`` folder, so the default media root is ``<src folder>/videos``),
``overall_preference`` and ``category_preference`` (per aspect: Alignment, Safety, Fineness,
Coherence & Consistency, Bias). Values: ``"Video 1 better"`` (the first video, ``video_0``, side
``a``), ``"Video 2 better"`` and ``"Same"`` (a tie). MJ-Video's evaluation counts only the two
exact "better" strings (``deal_preference`` in ``scripts/data_processor/dataset.py``), so any other
string (the real file holds ``"Hard to judge"`` and ``"Video 1 Better"``) is a missing label for
that dimension, and the value is kept in ``meta["missing_labels"]`` for the converter to count; a
null aspect is a missing label too. The per-video scores (``video_0_overall_score``,
``video_0_label``, ...) go to ``meta``. The id is the item's ``id`` field when present, else
``mjbench-video-<index>``.
"""

from __future__ import annotations

from pathlib import Path

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side, quote

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "test.json"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
PREFERENCES = {"Video 1 better": "a", "Video 2 better": "b", "Same": "tie"}
MEDIA_FOLDER = "videos"  # the video paths start inside the release's videos/ folder


def _preference(ctx: RowContext, field: str, value: object, label: dict[str, str], missing: dict[str, str],
                dim: str) -> None:
    """Add ``dim``'s label, or note a string outside the vocabulary as a missing label."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ctx.error(f"{field} must be a string, got {quote(value)}")
    if value in PREFERENCES:
        label[dim] = PREFERENCES[value]
    else:
        missing[dim] = value


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; video paths resolve against ``media_root`` (default: ``videos/`` next to the file)."""
    src, root = resolve_roots(src, media_root, default_folder=MEDIA_FOLDER)
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        record_id = str(row["id"]) if row.get("id") not in (None, "") else f"mjbench-video-{index}"
        ctx = RowContext(src, where, row, record_id)
        label: dict[str, str] = {}
        missing: dict[str, str] = {}
        if "overall_preference" not in row:
            raise ctx.error("missing field 'overall_preference'")
        _preference(ctx, "field 'overall_preference'", row["overall_preference"], label, missing, "overall")
        aspects = row.get("category_preference") or {}
        if not isinstance(aspects, dict):
            raise ctx.error(f"field 'category_preference' must be an object, got {quote(aspects)}")
        for aspect, value in aspects.items():
            if aspect == "overall":
                raise ctx.error("category_preference may not name an aspect 'overall' (it is the overall label)")
            _preference(ctx, f"category_preference[{quote(aspect)}]", value, label, missing, aspect)
        if not label:
            raise ctx.error(f"no usable label: every value is outside {sorted(PREFERENCES)} ({quote(missing)})")
        derived = {"benchmark": NAME, "source_row": index}
        if missing:
            derived["missing_labels"] = missing
        records.append(PreferenceRecord(
            id=record_id,
            prompt=ctx.get("caption"),
            a=Side(video=media_path(ctx, root, ctx.get("video_0_path"))),
            b=Side(video=media_path(ctx, root, ctx.get("video_1_path"))),
            label=label,
            meta=build_meta(row, ["caption"], derived),
        ))
    return records
