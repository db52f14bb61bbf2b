"""Readers that turn public preference benchmarks (local files) into :class:`PreferenceRecord` s.

``READERS[name](src, media_root=None, media_out=None)`` reads the benchmark file ``src``:
relative media paths in it resolve against ``media_root`` (default: ``src``'s folder, or the
benchmark's media subfolder of it, e.g. MJ-Bench-Video's ``videos/``) and media
embedded in the file (VL-RewardBench's Parquet images) are written under ``media_out``. Record
media paths are absolute; write the records with :func:`mmreward.data.records.write_records`
into a folder that contains the media (``data/convert_benchmark.py`` does this). The layouts
and the choices made for each benchmark are documented in ``data/FORMATS_BENCHMARKS.md``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from mmreward.data.records import PreferenceRecord, RecordError, quote
from mmreward.errors import UnknownNameError

Reader = Callable[..., list[PreferenceRecord]]

# One module per benchmark, named after it: adding a reader is adding its module (and its fixture).
MODULES: dict[str, ModuleType] = {
    info.name: importlib.import_module(f"{__name__}.{info.name}")
    for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
}
READERS: dict[str, Reader] = {name: module.read for name, module in MODULES.items()}


def read_benchmark(
    name: str, src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None
) -> list[PreferenceRecord]:
    """Read benchmark ``name`` from ``src`` with the registered reader."""
    if name not in READERS:
        raise UnknownNameError(f"unknown benchmark {name!r}; known: {sorted(READERS)}")
    records = READERS[name](src, media_root=media_root, media_out=media_out)
    if not records:
        raise RecordError(f"the {name} file holds no records", src)
    return records


def missing_label_counts(records: Iterable[PreferenceRecord]) -> Counter[tuple[str, str]]:
    """``(dimension, source value) -> count`` of the labels a reader left missing because the
    benchmark's evaluation does not count that value (``meta["missing_labels"]``)."""
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        for dim, value in record.meta.get("missing_labels", {}).items():
            counts[dim, value] += 1
    return counts


def describe_missing_labels(records: Iterable[PreferenceRecord]) -> str | None:
    """One line on the labels left missing (see :func:`missing_label_counts`), None if there are none."""
    counts = missing_label_counts(records)
    if not counts:
        return None
    overall = sum(n for (dim, _), n in counts.items() if dim == "overall")
    others = sum(counts.values()) - overall
    detail = "; ".join(f"{dim} {quote(value)} x{n}" for (dim, value), n in sorted(counts.items()))
    return (f"{overall} overall and {others} other labels are missing (values the benchmark's evaluation "
            f"does not count): {detail}")


__all__ = ["MODULES", "READERS", "Reader", "describe_missing_labels", "missing_label_counts", "read_benchmark"]
