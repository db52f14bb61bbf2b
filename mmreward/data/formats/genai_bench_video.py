"""GenAI-Bench, video generation subset (TIGER-Lab/GenAI-Bench, config ``video_generation``).

Rows (Parquet as published, or JSON / JSONL exports): ``prompt``, ``left_video``,
``right_video``, ``vote_type`` and the model names. ``left_video`` / ``right_video`` are URLs in
the published files; they are looked up in ``media_root`` by file name (download the videos there
first); a relative path is taken relative to ``media_root``.

Votes: ``leftvote`` -> a, ``rightvote`` -> b, ``tievote`` -> tie and ``bothbad_vote`` -> tie.
GenAI-Bench's own scoring accepts a tie verdict (``A=B``) for both tie kinds, so "both bad" is a
tie here too; the original ``vote_type`` stays in ``meta`` to tell them apart. The id is
``genai-video-<row index>`` (the ``idx`` GenAI-Bench's inference script gives each example).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "test-00000-of-00001.parquet"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
VOTES = {"leftvote": "a", "rightvote": "b", "tievote": "tie", "bothbad_vote": "tie"}


def _local_video(ctx: RowContext, root: Path, value: str) -> Path:
    parsed = urlparse(value)
    if parsed.scheme in ("http", "https"):
        return media_path(ctx, root, Path(parsed.path).name)
    return media_path(ctx, root, value)


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; videos are found in ``media_root`` (default: the source file's folder)."""
    src, root = resolve_roots(src, media_root)
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        ctx = RowContext(src, where, row, f"genai-video-{index}")
        records.append(PreferenceRecord(
            id=ctx.record_id,
            prompt=ctx.get("prompt"),
            a=Side(video=_local_video(ctx, root, ctx.get("left_video"))),
            b=Side(video=_local_video(ctx, root, ctx.get("right_video"))),
            label={"overall": ctx.label("vote_type", VOTES)},
            meta=build_meta(row, ["prompt"], {"benchmark": NAME, "source_row": index}),
        ))
    return records
