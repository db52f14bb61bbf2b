"""Shared helpers of the benchmark readers: loading source tables and building records.

Every reader keeps the source fields it does not copy verbatim into the record (prompt and
response texts) in ``meta``, so nothing of the source row is lost; keys the reader derives
itself (``benchmark``, ``category``, ...) win, and a source column of the same name is kept as
``src_<name>``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmreward.data.records import RecordError, check_path_length, json_value, quote
from mmreward.errors import MissingInputError

# A source row and where it sits: the file line for CSV / JSONL, the 1-based position for JSON
# arrays and Parquet tables.
Row = tuple[int, dict[str, Any]]


def load_rows(path: str | Path) -> list[Row]:
    """Rows of a ``.csv``, ``.json`` (array of objects), ``.jsonl`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".jsonl":
        rows = []
        with path.open("rb") as f:
            for lineno, data in enumerate(f, start=1):
                if not data.strip():
                    continue
                try:
                    rows.append((lineno, json_value(data.decode("utf-8-sig" if lineno == 1 else "utf-8"))))
                except ValueError as e:  # UnicodeDecodeError included
                    raise RecordError(str(e), path, lineno) from e
        return [_check_object(r, path) for r in rows]
    if suffix == ".json":
        try:
            data = json_value(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise RecordError(str(e), path) from e
        if not isinstance(data, list):
            raise RecordError(f"expected a JSON array of objects, got {type(data).__name__}", path)
        return [_check_object((i, r), path) for i, r in enumerate(data, start=1)]
    if suffix == ".parquet":
        import pyarrow as pa  # installed with `datasets`; only Parquet sources need it
        import pyarrow.parquet as pq

        try:
            return [(i, r) for i, r in enumerate(pq.read_table(path).to_pylist(), start=1)]
        except (pa.ArrowException, OSError) as e:
            raise RecordError(f"unreadable Parquet file: {e}", path) from e
    raise ValueError(f"{path}: unsupported benchmark file type {suffix!r} (expected .csv, .json, .jsonl or .parquet)")


def _csv_rows(path: Path) -> list[Row]:
    """Rows of a CSV file with a header line; a malformed or undecodable line names its line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RecordError(f"not UTF-8 text: {e}", path, data.count(b"\n", 0, e.start) + 1) from e
    rows = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row:  # more cells than header columns
                raise RecordError(f"row has {len(reader.fieldnames) + len(row[None])} cells for "
                                  f"{len(reader.fieldnames)} columns", path, reader.line_num)
            rows.append((reader.line_num, row))
    except csv.Error as e:  # e.g. a field over csv.field_size_limit; the inner reader has counted the bad line
        raise RecordError(f"malformed CSV: {e}", path, reader.reader.line_num) from e
    return rows


def _check_object(row: Row, path: Path) -> Row:
    if not isinstance(row[1], dict):
        raise RecordError(f"expected a JSON object, got {type(row[1]).__name__}", path, row[0])
    return row


class RowContext:
    """Error reporting for one source row: every message names the file, the row and the id."""

    def __init__(self, path: Path, where: int, row: Mapping[str, Any], record_id: str | None = None):
        self.path, self.where, self.row, self.record_id = path, where, row, record_id

    def error(self, reason: str) -> RecordError:
        return RecordError(reason, self.path, self.where, self.record_id)

    def get(self, key: str, kind: type | tuple[type, ...] = str) -> Any:
        """A required field of the given type (strings must be non-empty)."""
        if key not in self.row or self.row[key] is None:
            raise self.error(f"missing field {key!r}")
        value = self.row[key]
        if not isinstance(value, kind) or (isinstance(value, str) and value == ""):
            kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(f"field {key!r} must be a non-empty {kinds}, got {quote(value)}")
        return value

    def label(self, key: str, mapping: Mapping[Any, str]) -> str:
        """A field's value translated to "a" / "b" / "tie"."""
        value = self.get(key, object)
        if value not in mapping:
            raise self.error(f"field {key!r} has unknown value {quote(value)}; expected one of {sorted(mapping, key=str)}")
        return mapping[value]


def media_path(ctx: RowContext, root: Path, value: str) -> Path:
    """A source media path joined to the (resolved) media folder; the file itself is not resolved,
    so a symlinked file inside the folder keeps its in-folder path, as in read_records. Paths
    longer than :data:`~mmreward.data.records.MAX_PATH_CHARS` are refused here, before anything
    resolves them."""
    try:
        check_path_length(value, "media path")
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return root / value


def build_meta(row: Mapping[str, Any], verbatim: Iterable[str], derived: Mapping[str, Any]) -> dict[str, Any]:
    """``derived`` plus every source field not in ``verbatim`` (colliding names get ``src_``)."""
    skip = set(verbatim)
    meta = dict(derived)
    for key, value in row.items():
        if key in skip:
            continue
        meta[f"src_{key}" if key in derived else key] = value
    return meta


def resolve_roots(src: str | Path, media_root: str | Path | None, default_folder: str = "") -> tuple[Path, Path]:
    """The source file and the folder its relative media paths start from (default: its folder,
    or ``default_folder`` inside it where the benchmark's paths start in a subfolder)."""
    src = Path(src).resolve()
    return src, (Path(media_root) if media_root is not None else src.parent / default_folder).resolve()
