"""Preference records: the JSONL schema shared by every reward model, its validating reader and writer.

One line per record::

    {"id": "p1", "prompt": "...",
     "a": {"image": "img/a.png", "images": [...], "video": "vid/a.mp4", "response": "..."},
     "b": {...},
     "label": {"overall": "a" | "b" | "tie", "<dimension>": "a" | "b" | "tie", ...},
     "meta": {...}}

A side holds at least one of ``image``, ``images``, ``video``, ``response``. Media paths are
relative to the JSONL file's folder and may not leave it (no absolute paths, no ``..`` escapes, no
symlinks pointing outside, nothing longer than ``MAX_PATH_CHARS``). ``label`` names at least one
dimension; ``overall`` is the headline one and is left out only where the source has no usable
overall verdict (a missing label, like any other dimension). ``meta`` is optional. In memory,
media paths are absolute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from mmreward.errors import MissingInputError, MmrewardError

__all__ = [
    "RecordError",
    "Side",
    "PreferenceRecord",
    "RecordSet",
    "read_records",
    "write_records",
    "label_to_int",
    "json_value",
    "missing_media",
    "quote",
    "require_media",
    "LABEL_VALUES",
    "MAX_PATH_CHARS",
]

LABEL_VALUES = ("a", "b", "tie")
_RECORD_FIELDS = {"id", "prompt", "a", "b", "label", "meta"}
_REQUIRED_FIELDS = ("id", "prompt", "a", "b", "label")
_SIDE_FIELDS = {"image", "images", "video", "response"}
# Longer paths cannot exist (Linux PATH_MAX) and resolving them costs minutes: refused up front.
MAX_PATH_CHARS = 4096
# How much of a bad value an error message quotes.
_QUOTE_CHARS = 80


def quote(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters for long values."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class RecordError(MmrewardError, ValueError):
    """A bad record; the message names the file, the line and the record id when known."""

    def __init__(
        self, reason: str, path: str | Path | None = None, line: int | None = None, record_id: str | None = None
    ):
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.line = line
        self.record_id = record_id
        where = str(path) if path is not None else "<records>"
        if line is not None:
            where += f":{line}"
        if record_id is not None:
            where += f" (id {quote(record_id, 200)})"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Keep file/line/id when the error crosses process boundaries (DataLoader workers, DDP).
        return (type(self), (self.reason, self.path, self.line, self.record_id))


@dataclass
class Side:
    """One candidate of a pair. ``image`` / ``images`` / ``video`` are absolute paths once read."""

    image: Path | None = None
    images: list[Path] = field(default_factory=list)
    video: Path | None = None
    response: str | None = None

    def media_paths(self) -> list[Path]:
        """Every media file of this side: image first, then images, then video."""
        return [path for _, path in self.named_media()]

    def named_media(self) -> list[tuple[str, Path]]:
        """``(field, path)`` of every media file, in :meth:`media_paths` order (``"images[1]"`` ...)."""
        named = [("image", self.image)] if self.image is not None else []
        named += [(f"images[{i}]", p) for i, p in enumerate(self.images)]
        if self.video is not None:
            named.append(("video", self.video))
        return named


@dataclass
class PreferenceRecord:
    """A prompt, two candidates and the human verdict per dimension (``label["overall"]`` always set)."""

    id: str
    prompt: str
    a: Side
    b: Side
    label: dict[str, str]
    meta: dict = field(default_factory=dict)


class RecordSet(Sequence[PreferenceRecord]):
    """Records read from one JSONL file; ``skipped`` holds the errors of records left out."""

    def __init__(
        self, records: list[PreferenceRecord], path: Path | None = None, skipped: list[RecordError] | None = None
    ):
        self.records = records
        self.path = path
        self.skipped = skipped if skipped is not None else []

    @overload
    def __getitem__(self, i: int) -> PreferenceRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[PreferenceRecord]: ...
    def __getitem__(self, i):
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PreferenceRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"RecordSet({len(self.records)} records, {len(self.skipped)} skipped, path={self.path})"


def label_to_int(value: str) -> int:
    """Preference as a sign: "a" -> 1, "b" -> -1, "tie" -> 0."""
    mapping = {"a": 1, "b": -1, "tie": 0}
    if value not in mapping:
        raise ValueError(f"label must be one of {LABEL_VALUES}, got {value!r}")
    return mapping[value]


# ------------------------------------------------------------------------------------- parsing


def _media_path(value: Any, root: Path, check_exists: bool, what: str, allow_absolute: bool = False) -> Path:
    """Resolve a JSONL media path against ``root`` (resolved), refusing anything outside it.

    ``allow_absolute`` (writer input only) accepts absolute paths that lie inside ``root``.
    """
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError(f"{what} must be a non-empty path string, got {quote(value)}")
    check_path_length(value, what)
    rel = Path(value)
    if rel.is_absolute() and not allow_absolute:
        raise ValueError(f"{what} {quote(str(value))} is absolute; media paths must be relative to the JSONL folder")
    full = root / rel
    # resolve() follows symlinks and '..', so both kinds of escape are caught here.
    if not full.resolve().is_relative_to(root):
        raise ValueError(f"{what} {quote(str(value))} escapes the JSONL folder {root}")
    if check_exists and not full.is_file():
        raise ValueError(f"{what} {quote(str(value))} not found ({full})")
    return full


def check_path_length(value: str | Path, what: str) -> None:
    """Refuse a path longer than :data:`MAX_PATH_CHARS` before anything resolves it."""
    if len(str(value)) > MAX_PATH_CHARS:
        raise ValueError(f"{what} is {len(str(value)):,} characters long (at most {MAX_PATH_CHARS} allowed): "
                         f"{quote(str(value))}")


def _parse_side(raw: Any, name: str, root: Path, check_exists: bool, allow_absolute: bool) -> Side:
    if not isinstance(raw, dict):
        raise ValueError(f"side {name!r} must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _SIDE_FIELDS
    if unknown:
        raise ValueError(f"side {name!r} has unknown field(s) {quote(sorted(unknown))}; allowed: {sorted(_SIDE_FIELDS)}")
    side = Side()
    if raw.get("image") is not None:
        side.image = _media_path(raw["image"], root, check_exists, f"{name}.image", allow_absolute)
    images = raw.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise ValueError(f"{name}.images must be a list of paths")
        side.images = [
            _media_path(p, root, check_exists, f"{name}.images[{i}]", allow_absolute) for i, p in enumerate(images)
        ]
    if raw.get("video") is not None:
        side.video = _media_path(raw["video"], root, check_exists, f"{name}.video", allow_absolute)
    response = raw.get("response")
    if response is not None and not isinstance(response, str):
        raise ValueError(f"{name}.response must be a string")
    side.response = response
    if side.image is None and not side.images and side.video is None and side.response is None:
        raise ValueError(f"side {name!r} is empty; it needs image, images, video or response")
    return side


def _parse_label(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ValueError(f"label must be an object like {{'overall': 'a'}}, got {quote(raw)}")
    if not raw:
        raise ValueError("label names no dimension; it needs at least one, e.g. {'overall': 'a'}")
    for dim, value in raw.items():
        if value not in LABEL_VALUES:
            raise ValueError(f"unknown label value {quote(value)} for {quote(dim)}; expected one of {LABEL_VALUES}")
    return dict(raw)


def _parse_record(raw: Any, root: Path, check_exists: bool, allow_absolute: bool = False) -> PreferenceRecord:
    if not isinstance(raw, dict):
        raise ValueError(f"a record must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED_FIELDS if k not in raw]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = set(raw) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {quote(sorted(unknown))}; allowed: {sorted(_RECORD_FIELDS)}")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise ValueError(f"id must be a non-empty string, got {quote(raw['id'])}")
    if not isinstance(raw["prompt"], str):
        raise ValueError("prompt must be a string")
    meta = raw.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    return PreferenceRecord(
        id=raw["id"],
        prompt=raw["prompt"],
        a=_parse_side(raw["a"], "a", root, check_exists, allow_absolute),
        b=_parse_side(raw["b"], "b", root, check_exists, allow_absolute),
        label=_parse_label(raw["label"]),
        meta=meta,
    )


def read_records(path: str | Path, skip_invalid: bool = False) -> RecordSet:
    """Read and validate a JSONL file of preference records.

    Each bad line raises a :class:`RecordError` naming the file, the line number and the id (when
    the line had one). With ``skip_invalid=True`` bad records are left out and their errors are
    kept in ``RecordSet.skipped``. Blank lines are ignored. The first record with a given id wins;
    later ones are duplicates. A file without any record (empty, only blank lines, or with
    ``skip_invalid`` only bad lines) raises a :class:`RecordError`: nothing downstream should
    train on or report metrics over zero pairs.
    """
    path = Path(path)
    root = path.parent.resolve()
    records: list[PreferenceRecord] = []
    skipped: list[RecordError] = []
    first_line: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            if not data.strip():
                continue
            record_id = None
            try:
                # Decoding per line turns a bad byte into an error for that line (UnicodeDecodeError is a
                # ValueError); utf-8-sig drops a byte-order mark at the start of the file.
                text = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
                raw = json_value(text)
                if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    record_id = raw["id"]
                record = _parse_record(raw, root, check_exists=True)
                if record.id in first_line:
                    raise ValueError(f"duplicate id (first seen on line {first_line[record.id]})")
            except ValueError as e:
                error = RecordError(str(e), path, lineno, record_id)
                if not skip_invalid:
                    raise error from e
                skipped.append(error)
                continue
            first_line[record.id] = lineno
            records.append(record)
    if not records:
        if skipped:
            raise RecordError(f"no valid record: all {len(skipped)} were invalid; the first: {skipped[0]}", path)
        raise RecordError("the file holds no records (it is empty or has only blank lines)", path)
    return RecordSet(records, path=path, skipped=skipped)


def json_value(text: str) -> Any:
    """``json.loads`` whose every failure is a ValueError (nesting too deep raises RecursionError there)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e}") from e
    except RecursionError as e:
        raise ValueError("malformed JSON: nested too deeply to parse") from e


def missing_media(records: Iterable[PreferenceRecord]) -> tuple[int, list[tuple[str, str, Path]]]:
    """``(files referenced, [(record id, field, path), ...])`` of the media files that do not exist.

    Each distinct path is checked once; the list keeps the first record naming each missing file.
    """
    checked: dict[Path, bool] = {}
    missing: list[tuple[str, str, Path]] = []
    for record in records:
        for name, side in (("a", record.a), ("b", record.b)):
            for field_name, p in side.named_media():
                if p not in checked:
                    checked[p] = p.is_file()
                    if not checked[p]:
                        missing.append((record.id, f"{name}.{field_name}", p))
    return len(checked), missing


def require_media(records: Iterable[PreferenceRecord], show: int = 5) -> None:
    """Raise ``FileNotFoundError`` naming how many media files are missing and the first ``show``."""
    referenced, missing = missing_media(records)
    if missing:
        first = "; ".join(f"id {quote(rid, 200)} {field} {path}" for rid, field, path in missing[:show])
        raise MissingInputError(f"{len(missing)} of the {referenced} media files the records name do not exist; "
                                f"first {min(show, len(missing))}: {first}")


# ------------------------------------------------------------------------------------- writing


def _relative(p: Path | str, root: Path, what: str) -> str:
    """Path as written to JSONL: relative to ``root``. Relative inputs are already taken as relative to it."""
    check_path_length(p, what)
    p = Path(p)
    full = p if p.is_absolute() else root / p
    for candidate in (full, full.resolve()):
        if candidate.is_relative_to(root):
            rel = candidate.relative_to(root)
            if ".." not in rel.parts:
                return rel.as_posix()
    raise ValueError(f"{what} {str(p)!r} is outside the JSONL folder {root}")


def _side_to_dict(side: Side, name: str, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if side.image is not None:
        out["image"] = _relative(side.image, root, f"{name}.image")
    if side.images:
        out["images"] = [_relative(p, root, f"{name}.images[{i}]") for i, p in enumerate(side.images)]
    if side.video is not None:
        out["video"] = _relative(side.video, root, f"{name}.video")
    if side.response is not None:
        out["response"] = side.response
    return out


def write_records(path: str | Path, records: Iterable[PreferenceRecord | dict]) -> Path:
    """Write records as JSONL, media paths relative to the file's folder.

    ``records`` may be :class:`PreferenceRecord` objects or dicts in the JSONL schema. Relative
    paths are taken as relative to the JSONL folder (as in the file format); absolute paths must lie
    inside it. Every record is validated as the reader would (except that media need not exist
    yet) and ids must be unique; a bad one raises :class:`RecordError` (``line`` = its 1-based
    position) before anything is written.
    """
    path = Path(path)
    root = path.parent.resolve()
    lines: list[str] = []
    seen: set[str] = set()
    for n, item in enumerate(records, start=1):
        record_id = getattr(item, "id", None) if not isinstance(item, dict) else item.get("id")
        try:
            rec = item if isinstance(item, PreferenceRecord) else _parse_record(item, root, False, allow_absolute=True)
            row = {
                "id": rec.id,
                "prompt": rec.prompt,
                "a": _side_to_dict(rec.a, "a", root),
                "b": _side_to_dict(rec.b, "b", root),
                "label": rec.label,
                "meta": rec.meta,
            }
            _parse_record(row, root, check_exists=False)  # what we write must read back
            if rec.id in seen:
                raise ValueError("duplicate id")
            seen.add(rec.id)
            lines.append(json.dumps(row, ensure_ascii=False))
        except (ValueError, TypeError, RecursionError) as e:  # TypeError / RecursionError: meta JSON cannot encode
            raise RecordError(str(e), path, n, record_id if isinstance(record_id, str) else None) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
