"""Preference records: the JSONL schema shared by every reward model, its validating reader and writer.

One line per record::

    {"id": "p1", "prompt": "...",
     "a": {"image": "img/a.png", "images": [...], "video": "vid/a.mp4", "response": "..."},
     "b": {...},
     "label": {"overall": "a" | "b" | "tie", "<dimension>": "a" | "b" | "tie", ...},
     "meta": {...}}

A side holds at least one of ``image``, ``images``, ``video``, ``response``. Media paths are
relative to the JSONL file's folder and may not leave it (no absolute paths, no ``..`` escapes, no
symlinks pointing outside). ``meta`` is optional. In memory, media paths are absolute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

__all__ = [
    "RecordError",
    "Side",
    "PreferenceRecord",
    "RecordSet",
    "read_records",
    "write_records",
    "label_to_int",
    "LABEL_VALUES",
]

LABEL_VALUES = ("a", "b", "tie")
_RECORD_FIELDS = {"id", "prompt", "a", "b", "label", "meta"}
_REQUIRED_FIELDS = ("id", "prompt", "a", "b", "label")
_SIDE_FIELDS = {"image", "images", "video", "response"}


class RecordError(ValueError):
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
            where += f" (id {record_id!r})"
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
        paths = [self.image] if self.image is not None else []
        paths += self.images
        if self.video is not None:
            paths.append(self.video)
        return paths


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
        raise ValueError(f"{what} must be a non-empty path string, got {value!r}")
    rel = Path(value)
    if rel.is_absolute() and not allow_absolute:
        raise ValueError(f"{what} {str(value)!r} is absolute; media paths must be relative to the JSONL folder")
    full = root / rel
    # resolve() follows symlinks and '..', so both kinds of escape are caught here.
    if not full.resolve().is_relative_to(root):
        raise ValueError(f"{what} {str(value)!r} escapes the JSONL folder {root}")
    if check_exists and not full.is_file():
        raise ValueError(f"{what} {str(value)!r} not found ({full})")
    return full


def _parse_side(raw: Any, name: str, root: Path, check_exists: bool, allow_absolute: bool) -> Side:
    if not isinstance(raw, dict):
        raise ValueError(f"side {name!r} must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _SIDE_FIELDS
    if unknown:
        raise ValueError(f"side {name!r} has unknown field(s) {sorted(unknown)}; allowed: {sorted(_SIDE_FIELDS)}")
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
        raise ValueError(f"label must be an object like {{'overall': 'a'}}, got {raw!r}")
    if "overall" not in raw:
        raise ValueError(f"label has no 'overall' entry: {raw!r}")
    for dim, value in raw.items():
        if value not in LABEL_VALUES:
            raise ValueError(f"unknown label value {value!r} for {dim!r}; expected one of {LABEL_VALUES}")
    return dict(raw)


def _parse_record(raw: Any, root: Path, check_exists: bool, allow_absolute: bool = False) -> PreferenceRecord:
    if not isinstance(raw, dict):
        raise ValueError(f"a record must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED_FIELDS if k not in raw]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = set(raw) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_RECORD_FIELDS)}")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise ValueError(f"id must be a non-empty string, got {raw['id']!r}")
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
    later ones are duplicates.
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
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"malformed JSON: {e}") from e
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
    return RecordSet(records, path=path, skipped=skipped)


# ------------------------------------------------------------------------------------- writing


def _relative(p: Path | str, root: Path, what: str) -> str:
    """Path as written to JSONL: relative to ``root``. Relative inputs are already taken as relative to it."""
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
        except (ValueError, TypeError) as e:  # TypeError: meta that JSON cannot encode
            raise RecordError(str(e), path, n, record_id if isinstance(record_id, str) else None) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
