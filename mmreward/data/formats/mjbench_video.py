"""MJ-Bench-Video (MJ-Bench/MJ-BENCH-VIDEO ``test.json``): a JSON array of video pairs.

Fields used: ``caption`` (the prompt), ``video_0_path`` / ``video_1_path`` (relative to the
dataset folder), ``overall_preference`` and ``category_preference`` (per aspect: Alignment,
Safety, Fineness, Coherence & Consistency, Bias & Fairness) with values ``"Video 1 better"``
(the first video, ``video_0``), ``"Video 2 better"`` and ``"Same"``. Each aspect becomes a label
dimension under its own name; an aspect without a value (null) is a missing label. The
per-video scores (``video_0_overall_score``, ``video_0_label``, ...) go to ``meta``. The id is the
item's ``id`` field when present, else ``mjbench-video-<index>``.
"""

from __future__ import annotations

from pathlib import Path

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side

NAME = "mjbench_video"
PREFERENCES = {"Video 1 better": "a", "Video 2 better": "b", "Same": "tie"}


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; video paths resolve against ``media_root`` (default: the file's folder)."""
    src, root = resolve_roots(src, media_root)
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        record_id = str(row["id"]) if row.get("id") not in (None, "") else f"mjbench-video-{index}"
        ctx = RowContext(src, where, row, record_id)
        label = {"overall": ctx.label("overall_preference", PREFERENCES)}
        aspects = row.get("category_preference") or {}
        if not isinstance(aspects, dict):
            raise ctx.error(f"field 'category_preference' must be an object, got {aspects!r}")
        for aspect, value in aspects.items():
            if value is None:
                continue
            if aspect == "overall":
                raise ctx.error("category_preference may not name an aspect 'overall' (it is the overall label)")
            if value not in PREFERENCES:
                raise ctx.error(f"category_preference[{aspect!r}] has unknown value {value!r}; "
                                f"expected one of {sorted(PREFERENCES)}")
            label[aspect] = PREFERENCES[value]
        records.append(PreferenceRecord(
            id=record_id,
            prompt=ctx.get("caption"),
            a=Side(video=media_path(root, ctx.get("video_0_path"))),
            b=Side(video=media_path(root, ctx.get("video_1_path"))),
            label=label,
            meta=build_meta(row, ["caption"], {"benchmark": NAME, "source_row": index}),
        ))
    return records
