"""MM-RLHF-RewardBench (yifanzhang114/MM-RLHF-RewardBench): ``mm_reward_bench.jsonl``.

One line per (question, chosen, rejected) pair: ``id``, ``prompt``, ``chosen``, ``rejected``,
``chosen_reason``, ``rejected_reason`` and either ``image`` (an image file) or ``video`` (a
folder of frame images), both relative to the dataset folder. Several lines share an ``id``: they
are one item with several response pairs, and Acc+ counts an item only if all of its pairs are
right, so the shared id is kept as ``meta["item_id"]`` and the record id becomes
``<id>#<k>`` (k-th pair of the item in file order).

The chosen response is side ``a`` (label ``a``), as in the benchmark's evaluation. A video's
frames become the side's ``images``: 32 of the folder's files, sorted by name, at indices
``np.linspace(0, n - 1, 32, dtype=int)`` (repeating frames when the folder holds fewer than 32), as
the official evaluation (julyanghar/MM-RLHF ``llava/eval/eval_mm_reward_bench.py``,
``process_video``) picks them; the folder must exist when converting and ``meta["video_frames"]``
records how many files it held. ``meta["category"]`` is the
first of ``mcq``, ``long``, ``short``, ``safety``, ``video`` found in the media path (the
official category rule); it is absent when none matches.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "mm_reward_bench.jsonl"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
CATEGORY_KEYWORDS = ("mcq", "long", "short", "safety", "video")
VIDEO_FRAMES = 32  # frames the official evaluation samples from a video's frame folder


def frame_files(ctx: RowContext, folder: Path) -> list[Path]:
    """Every file of a video's frame folder, sorted by name."""
    if not folder.is_dir():
        raise ctx.error(f"video frame folder not found: {folder}")
    frames = sorted(p for p in folder.iterdir() if p.is_file())
    if not frames:
        raise ctx.error(f"video frame folder is empty: {folder}")
    return frames


def sample_frames(frames: list[Path], count: int = VIDEO_FRAMES) -> list[Path]:
    """``count`` frames at ``np.linspace(0, len - 1, count, dtype=int)`` (truncated, so repeats when
    there are fewer frames than ``count``), the official evaluation's choice."""
    return [frames[i] for i in np.linspace(0, len(frames) - 1, count, dtype=int)]


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; media paths resolve against ``media_root`` (default: the file's folder)."""
    src, root = resolve_roots(src, media_root)
    seen: Counter[str] = Counter()
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        ctx = RowContext(src, where, row)
        item_id = str(ctx.get("id", (str, int)))
        ctx.record_id = f"{item_id}#{seen[item_id]}"
        seen[item_id] += 1
        if bool(row.get("image")) == bool(row.get("video")):
            raise ctx.error("exactly one of 'image' and 'video' must be set")
        if row.get("image"):
            media_field, side_media = "image", {"image": media_path(ctx, root, ctx.get("image"))}
        else:
            frames = frame_files(ctx, media_path(ctx, root, ctx.get("video")))
            media_field, side_media = "video", {"images": sample_frames(frames)}
        derived = {"benchmark": NAME, "source_row": index, "item_id": item_id,
                   "modality": "image" if media_field == "image" else "video_frames"}
        if media_field == "video":
            derived["video_frames"] = len(frames)
        category = next((k for k in CATEGORY_KEYWORDS if k in row[media_field]), None)
        if category is not None:
            derived["category"] = category
        records.append(PreferenceRecord(
            id=ctx.record_id,
            prompt=ctx.get("prompt"),
            a=Side(response=ctx.get("chosen"), **side_media),
            b=Side(response=ctx.get("rejected"), **side_media),
            label={"overall": "a"},
            meta=build_meta(row, ["prompt", "chosen", "rejected"], derived),
        ))
    return records
