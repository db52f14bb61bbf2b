"""Resumable, data-parallel scoring of preference pairs into a predictions JSONL.

Layout of an evaluation directory:

    run_config.json     what is being evaluated (scorer, data, options); a rerun must match it
    predictions.jsonl   one row per pair id, in dataset order (written when a run completes)
    shards/part-R.jsonl rows streamed by process R while a run is in progress

How a run goes, on every process (`accelerate launch` or a plain `python`):

1. The main process folds earlier shards into `predictions.jsonl` (dropping a line cut short by a
   kill and any duplicate id) and removes them; everyone waits for it.
2. The ids not yet in `predictions.jsonl` are ordered by the scorer's cost estimate (length
   bucketing) and cut into batches, the same on every process; process R takes batches R, R + W,
   R + 2W, ... The batch contents do not depend on the number of processes, so one process and
   several give the same predictions.
3. Each process streams its rows to its own shard, with flush + fsync after every batch, so a
   killed run loses at most the batch in flight.
4. After a barrier the main process merges the shards into `predictions.jsonl` (written to a
   temporary file, fsynced and renamed, so it is never half-written) and removes them.

A pair whose media fail, or that the scorer rejects (`RECOVERABLE_ERRORS`), gets a row with an
`error` entry and counts as done; `RunnerConfig.retry_errors` scores those ids again.

Row format: `{"id", "item_id", "category", "labels": {dim: 1|-1|0}, "delta": {dim: float},
"score_a", "score_b", "extra"}` plus `"delta_swapped"` / `"extra_swapped"` with `both_orders`;
error rows have `"error": {"type", "message"}` instead of scores.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreward.data.records import PreferenceRecord, label_to_int
from mmreward.errors import MmrewardError
from mmreward.evaluation.scorers import (
    RECOVERABLE_ERRORS,
    PairScore,
    Scorer,
    swap_record,
)

__all__ = [
    "PREDICTIONS_NAME",
    "RUN_CONFIG_NAME",
    "SHARD_DIR",
    "RunnerConfig",
    "RunStats",
    "RunConfigError",
    "PredictionsError",
    "make_batches",
    "run_identity",
    "check_run_config",
    "read_rows",
    "consolidate",
    "load_predictions",
    "run_predictions",
]

PREDICTIONS_NAME = "predictions.jsonl"
RUN_CONFIG_NAME = "run_config.json"
SHARD_DIR = "shards"


class RunConfigError(MmrewardError, RuntimeError):
    """The output directory holds predictions of a different evaluation."""


class PredictionsError(MmrewardError, ValueError):
    """A predictions file that cannot be read (the message names file and line)."""


@dataclass
class RunnerConfig:
    """How pairs are batched and scored.

    batch_size: pairs per batch (with `both_orders`, each pair is scored twice in its batch).
    max_batch_cost: optional budget per batch in the scorer's cost units (~tokens): a batch closes
        before `pairs * max cost in batch` would exceed it, so long pairs go in smaller batches.
    bucket_by_length: order pairs by the scorer's cost estimate before batching (less padding);
        off keeps dataset order.
    num_workers: DataLoader worker processes that decode media and collate batches (the scorer's
        `prepare` and `collate`) ahead of the model (0: inline).
    both_orders: also score each pair with the sides swapped (position bias of judges).
    retry_errors: score again the ids whose earlier attempt recorded an error.
    progress: show a progress bar on the main process.
    """

    batch_size: int = 8
    max_batch_cost: float | None = None
    bucket_by_length: bool = True
    num_workers: int = 0
    both_orders: bool = False
    retry_errors: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"RunnerConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_batch_cost is not None and self.max_batch_cost <= 0:
            raise ValueError(f"RunnerConfig.max_batch_cost must be positive, got {self.max_batch_cost}")
        if self.num_workers < 0:
            raise ValueError(f"RunnerConfig.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class RunStats:
    """What this process did in one call (not counting pairs done by earlier runs)."""

    scored: int
    errors: int
    already_done: int
    seconds: float
    process_index: int
    num_processes: int

    @property
    def pairs_per_second(self) -> float:
        return (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------------ batching


def make_batches(costs: Sequence[float], batch_size: int, max_batch_cost: float | None = None,
                 bucket: bool = True) -> list[list[int]]:
    """Indices into `costs` grouped into batches, cheapest first when `bucket` (stable for ties)."""
    order = sorted(range(len(costs)), key=lambda i: costs[i]) if bucket else list(range(len(costs)))
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0.0
    for i in order:
        widest_with = max(widest, costs[i])
        over_budget = max_batch_cost is not None and widest_with * (len(current) + 1) > max_batch_cost
        if current and (len(current) >= batch_size or over_budget):
            batches.append(current)
            current, widest_with = [], costs[i]
        current.append(i)
        widest = widest_with
    if current:
        batches.append(current)
    return batches


# ------------------------------------------------------------------------------------ files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a predictions JSONL. A last line without its newline (a write cut short by a kill)
    is dropped; any other unreadable line raises `PredictionsError` naming the file and line."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail is "" when the file ends with a newline
    rows = []
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PredictionsError(f"{path}:{lineno}: not valid JSON ({err}); the file is corrupt") from err
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise PredictionsError(f"{path}:{lineno}: a prediction row must be an object with a string id")
        rows.append(row)
    if tail.strip():
        print(f"note: {path}: dropped an unfinished last line (interrupted write)", file=sys.stderr)
    return rows


def _write_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def consolidate(out_dir: Path, order: Sequence[str] = (), drop_errors: bool = False) -> list[dict[str, Any]]:
    """Fold `shards/*.jsonl` into `predictions.jsonl` and remove the shards; returns the rows.

    One row per id: a scored row wins over an error row, otherwise the first one read (the merged
    file before the shards). Rows follow `order` (ids), then any other ids in the order read.
    `drop_errors` leaves error rows out, so those ids count as not done.
    """
    out_dir = Path(out_dir)
    merged_path = out_dir / PREDICTIONS_NAME
    shard_paths = sorted((out_dir / SHARD_DIR).glob("*.jsonl")) if (out_dir / SHARD_DIR).is_dir() else []
    by_id: dict[str, dict[str, Any]] = {}
    for path in ([merged_path] if merged_path.exists() else []) + shard_paths:
        for row in read_rows(path):
            kept = by_id.get(row["id"])
            if kept is None or ("error" in kept and "error" not in row):
                by_id[row["id"]] = row
    if drop_errors:
        by_id = {k: v for k, v in by_id.items() if "error" not in v}
    rank = {rid: i for i, rid in enumerate(order)}
    rows = sorted(by_id.values(), key=lambda r: rank.get(r["id"], len(rank)))
    if shard_paths or drop_errors or not merged_path.exists():
        _write_atomic(merged_path, rows)
    for path in shard_paths:  # only after the merged file is safely on disk
        path.unlink()
    shard_dir = out_dir / SHARD_DIR
    if shard_dir.is_dir() and not any(shard_dir.iterdir()):
        shard_dir.rmdir()
    return rows


def load_predictions(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a finished evaluation directory's `predictions.jsonl`."""
    path = Path(out_dir) / PREDICTIONS_NAME
    if not path.is_file():
        raise PredictionsError(f"{path}: missing; run the evaluation first")
    return read_rows(path)


def run_identity(scorer: Scorer, cfg: RunnerConfig, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `run_config.json` records: the scorer, the row format (both_orders) and the caller's keys."""
    # both_orders changes what a row holds, so rows of the two modes must not mix.
    full = {"scorer": scorer.describe(), "both_orders": cfg.both_orders, **(identity or {})}
    return json.loads(json.dumps(full, sort_keys=True, default=str))


def check_run_config(out_dir: str | Path, identity: dict[str, Any], flag: str = "the output directory") -> None:
    """Raise `RunConfigError` if `out_dir` holds predictions of an evaluation other than `identity`
    (as built by `run_identity`); `flag` names the option in the message. Writes nothing, so callers
    can check before touching the folder."""
    path = Path(out_dir) / RUN_CONFIG_NAME
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    if previous != identity:
        changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
        raise RunConfigError(
            f"{out_dir}: holds predictions of a different evaluation (differs in {changed}); "
            f"choose another {flag}, or pass --overwrite true to discard them"
        )


def _claim_run_dir(out_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    if overwrite:
        for stale in [out_dir / PREDICTIONS_NAME, *(out_dir / SHARD_DIR).glob("*.jsonl")]:
            if stale.exists():
                stale.unlink()
    else:
        check_run_config(out_dir, identity)
    (out_dir / RUN_CONFIG_NAME).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------ scoring


def _base_row(record: PreferenceRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "item_id": str(record.meta.get("item_id", record.id)),
        "category": record.meta.get("category"),
        "labels": {dim: label_to_int(value) for dim, value in record.label.items()},
    }


def _error_info(err: BaseException) -> dict[str, str]:
    # Plain data, not the exception: prepared batches cross process boundaries (DataLoader workers)
    # and not every exception class survives pickling.
    return {"type": type(err).__name__, "message": str(err)}


def _error_row(record: PreferenceRecord, error: dict[str, str]) -> dict[str, Any]:
    return {**_base_row(record), "error": error}


def _score_row(record: PreferenceRecord, ab: PairScore, ba: PairScore | None) -> dict[str, Any]:
    row = {**_base_row(record), "delta": ab.delta, "score_a": ab.score_a, "score_b": ab.score_b}
    if ab.extra:
        row["extra"] = ab.extra
    if ba is not None:
        row["delta_swapped"] = ba.delta
        if ba.extra:
            row["extra_swapped"] = ba.extra
    return row


def _views(record: PreferenceRecord, both_orders: bool) -> list[PreferenceRecord]:
    return [record, swap_record(record)] if both_orders else [record]


@dataclass
class _PreparedBatch:
    """One batch as a DataLoader worker hands it over.

    entries: per record, ("ok", record, [prepared views] or None) or ("error", record, error info).
        Once the batch is collated the prepared views are dropped (None): decoded media would
        otherwise cross the process boundary twice. The rare batch whose scoring fails prepares
        them again in the main process.
    collated: `scorer.collate` of every ok view, or None when that raised a recoverable error
        (the main process then narrows the failure down pair by pair).
    """

    entries: list[tuple]
    collated: Any


def _prepare_batch(records: Sequence[PreferenceRecord], scorer: Scorer, both_orders: bool) -> _PreparedBatch:
    """Media decoding and collation of one batch (both may run in a DataLoader worker)."""
    entries = []
    for record in records:
        try:
            entries.append(("ok", record, [scorer.prepare(view) for view in _views(record, both_orders)]))
        except RECOVERABLE_ERRORS as err:
            entries.append(("error", record, _error_info(err)))
    views = [view for status, _, prepared in entries if status == "ok" for view in prepared]
    collated = None
    if views:
        try:
            collated = scorer.collate(views)
        except RECOVERABLE_ERRORS:
            pass  # _score_prepared collates pair by pair and records the pairs at fault
        else:
            entries = [(status, record, None if status == "ok" else info) for status, record, info in entries]
    return _PreparedBatch(entries, collated)


def _score_prepared(prepared: _PreparedBatch, scorer: Scorer, both_orders: bool) -> list[dict[str, Any]]:
    """Rows for one prepared batch; a recoverable failure of the whole batch is narrowed down by
    scoring its pairs one at a time, so only the pairs at fault get error rows."""
    ok = [(record, views) for status, record, views in prepared.entries if status == "ok"]
    rows: dict[str, dict[str, Any]] = {
        record.id: _error_row(record, err) for status, record, err in prepared.entries if status == "error"
    }
    width = 2 if both_orders else 1

    def rows_for(group: list[tuple], collated: Any = None) -> list[dict[str, Any]]:
        if collated is None:
            collated = scorer.collate([
                view for record, views in group
                for view in (views if views is not None else [scorer.prepare(v) for v in _views(record, both_orders)])
            ])
        results = scorer.score(collated)
        if len(results) != width * len(group):
            raise RuntimeError(f"scorer {scorer.name!r} returned {len(results)} scores for {width * len(group)} inputs")
        return [
            _score_row(record, results[width * i], results[width * i + 1] if both_orders else None)
            for i, (record, _) in enumerate(group)
        ]

    batch_rows = None
    if ok and prepared.collated is not None:
        try:
            batch_rows = rows_for(ok, prepared.collated)
        except RECOVERABLE_ERRORS:
            pass
    if batch_rows is None:  # the batch failed (or could not be collated): pair by pair
        batch_rows = []
        for record, views in ok:
            try:
                batch_rows += rows_for([(record, views)])
            except RECOVERABLE_ERRORS as err:
                batch_rows.append(_error_row(record, _error_info(err)))
    for row in batch_rows:
        rows[row["id"]] = row
    return [rows[record.id] for _, record, _ in prepared.entries]


class _BatchDataset:
    """Map-style dataset over batches of records: item i is batch i, prepared and collated (for
    DataLoader workers)."""

    def __init__(self, batches: list[list[PreferenceRecord]], scorer: Scorer, both_orders: bool):
        self.batches, self.scorer, self.both_orders = batches, scorer, both_orders

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> _PreparedBatch:
        return _prepare_batch(self.batches[i], self.scorer, self.both_orders)


def _unbatched(batch: Any) -> Any:
    return batch


def _prepared_batches(batches: list[list[PreferenceRecord]], scorer: Scorer, cfg: RunnerConfig) -> Iterator[_PreparedBatch]:
    if cfg.num_workers == 0:
        for batch in batches:
            yield _prepare_batch(batch, scorer, cfg.both_orders)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_BatchDataset(batches, scorer, cfg.both_orders), batch_size=None, shuffle=False,
                        num_workers=cfg.num_workers, collate_fn=_unbatched)
    yield from loader


def run_predictions(
    records: Sequence[PreferenceRecord],
    scorer: Scorer,
    out_dir: str | Path,
    cfg: RunnerConfig | None = None,
    state: Any | None = None,
    identity: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> RunStats:
    """Score every record not yet in `out_dir/predictions.jsonl` (see the module docstring).

    state: an `accelerate` `PartialState` / `Accelerator` (default: `PartialState()`, which reads
        the launch environment); processes split the batches and meet at barriers.
    identity: what makes this evaluation (scorer, data, options), kept in `run_config.json`; a
        rerun with a different identity raises `RunConfigError` unless `overwrite` (which also
        discards earlier predictions).
    Returns this process's statistics; the merged rows are in `load_predictions(out_dir)`.
    """
    cfg = cfg or RunnerConfig()
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    out = Path(out_dir)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"record ids must be unique; duplicated: {dupes}")

    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _claim_run_dir(out, run_identity(scorer, cfg, identity), overwrite)
        consolidate(out, ids, drop_errors=cfg.retry_errors)
    state.wait_for_everyone()

    done = {row["id"] for row in read_rows(out / PREDICTIONS_NAME)}
    todo = [r for r in records if r.id not in done]
    costs = scorer.costs(todo) if cfg.bucket_by_length else [0.0] * len(todo)
    batches = make_batches(costs, cfg.batch_size, cfg.max_batch_cost, cfg.bucket_by_length)
    mine = [[todo[i] for i in batch] for batch in batches[state.process_index::state.num_processes]]

    shard = out / SHARD_DIR / f"part-{state.process_index:05d}.jsonl"
    shard.parent.mkdir(parents=True, exist_ok=True)
    scored = errors = 0
    start = time.perf_counter()
    bar = None
    if cfg.progress and state.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b) for b in mine), desc=f"scoring ({state.num_processes} proc.)", unit="pair")
    with shard.open("a", encoding="utf-8") as f:
        for prepared in _prepared_batches(mine, scorer, cfg):
            rows = _score_prepared(prepared, scorer, cfg.both_orders)
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                errors += "error" in row
                scored += "error" not in row
            f.flush()
            os.fsync(f.fileno())
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start

    state.wait_for_everyone()
    if state.is_main_process:
        consolidate(out, ids)
    state.wait_for_everyone()
    return RunStats(scored, errors, len(done), seconds, state.process_index, state.num_processes)
