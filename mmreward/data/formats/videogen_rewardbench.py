"""VideoGen-RewardBench (VideoAlign): ``videogen-rewardbench.csv`` plus its ``videos/`` folder.

Columns used: ``path_A``, ``path_B`` (video paths relative to the dataset folder), ``prompt`` and
the labels ``VQ``, ``MQ``, ``TA``, ``Overall`` with values ``A`` / ``B`` / ``same``. Other
columns (``A_model``, ``B_model``, ``fps_A``, ``num_frames_A``, ...) go to ``meta``. An empty
dimension cell is a missing label; ``Overall`` is required. The CSV has no id column, so the id
is ``videogen-<row index>`` (0-based data row, the pandas index VideoAlign's evaluation uses).
"""

from __future__ import annotations

from pathlib import Path

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "videogen-rewardbench.csv"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
LABELS = {"A": "a", "B": "b", "same": "tie"}
DIMENSIONS = ("VQ", "MQ", "TA")


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of the CSV ``src``; video paths resolve against ``media_root`` (default: the CSV's folder)."""
    src, root = resolve_roots(src, media_root)
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        ctx = RowContext(src, where, row, f"videogen-{index}")
        label = {"overall": ctx.label("Overall", LABELS)}
        for dim in DIMENSIONS:
            if row.get(dim) not in (None, ""):
                label[dim] = ctx.label(dim, LABELS)
        records.append(PreferenceRecord(
            id=ctx.record_id,
            prompt=ctx.get("prompt"),
            a=Side(video=media_path(ctx, root, ctx.get("path_A"))),
            b=Side(video=media_path(ctx, root, ctx.get("path_B"))),
            label=label,
            meta=build_meta(row, ["prompt"], {"benchmark": NAME, "source_row": index}),
        ))
    return records
