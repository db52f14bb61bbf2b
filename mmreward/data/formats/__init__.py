"""Readers that turn public preference benchmarks (local files) into :class:`PreferenceRecord` s.

``READERS[name](src, media_root=None, media_out=None)`` reads the benchmark file ``src``:
relative media paths in it resolve against ``media_root`` (default: ``src``'s folder) and media
embedded in the file (VL-RewardBench's Parquet images) are written under ``media_out``. Record
media paths are absolute; write the records with :func:`mmreward.data.records.write_records`
into a folder that contains the media (``data/convert_benchmark.py`` does this). The layouts
and the choices made for each benchmark are documented in ``data/FORMATS_BENCHMARKS.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmreward.data.formats import (
    genai_bench_video,
    mjbench_video,
    mmrlhf_rewardbench,
    multimodal_rewardbench,
    synthetic,
    videogen_rewardbench,
    vl_rewardbench,
)
from mmreward.data.records import PreferenceRecord

Reader = Callable[..., list[PreferenceRecord]]

READERS: dict[str, Reader] = {
    module.NAME: module.read
    for module in (
        videogen_rewardbench,
        genai_bench_video,
        mjbench_video,
        vl_rewardbench,
        multimodal_rewardbench,
        mmrlhf_rewardbench,
        synthetic,
    )
}


def read_benchmark(
    name: str, src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None
) -> list[PreferenceRecord]:
    """Read benchmark ``name`` from ``src`` with the registered reader."""
    if name not in READERS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(READERS)}")
    return READERS[name](src, media_root=media_root, media_out=media_out)


__all__ = ["READERS", "Reader", "read_benchmark"]
