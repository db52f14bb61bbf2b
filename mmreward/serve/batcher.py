"""Dynamic batching: items of requests that arrive within a short window share one forward.

Requests put their decoded items on one queue. A worker takes the first waiting item, then more until
`max_batch` items are taken or the first one has waited `max_wait` seconds, and scores them together
in the model's thread (`ModelScorer`: the same encoding and batched forward as evaluation, the
values of `RewardModel.reward`), so a GPU runs few large forwards instead of many small ones. The queue is
bounded: `reserve` refuses items beyond `max_queue` (the server answers 503), before any media is
decoded.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mmreward.data.dataset import SideMedia
from mmreward.evaluation.tensor_processor import TensorProcessor
from mmreward.model import RewardModel
from mmreward.serve.metrics import ServerMetrics

Outcome = dict[str, float] | Exception  # an item's rewards by name, or why it could not be scored


@dataclass
class Job:
    """One item to score: its prompt, decoded side and whether to normalise its rewards."""

    prompt: str
    side: SideMedia
    normalize: bool
    enqueued: float = field(default_factory=time.perf_counter)


class ModelScorer:
    """Scores a batch of jobs with one forward, as evaluation does: the head's encoding through
    `TensorProcessor` (the processor's tensors, built faster) and `model.rewards_of`; then each row
    normalised (or not) and given its "overall" as `RewardModel.reward` reports it."""

    def __init__(self, model: RewardModel):
        self.model = model
        self.names = model.output_dimensions
        self.processor = TensorProcessor(model.processor)

    def __call__(self, jobs: Sequence[Job]) -> list[Outcome]:
        model = self.model
        try:
            inputs = model.head.encode_sides(self.processor, [j.prompt for j in jobs], [j.side for j in jobs],
                                             model.settings.collate)
            raw = model.rewards_of(inputs)
        except Exception as err:  # noqa: BLE001 - reported per item, never raised into the server
            if len(jobs) == 1:
                return [err]
            # One item the model cannot take (e.g. longer than max_length) must not fail the rest.
            return [self([job])[0] for job in jobs]
        outcomes: list[Outcome] = []
        for job, row in zip(jobs, raw):
            row = row[None]
            reported = model.with_overall(model.normalize(row) if job.normalize else row.double())
            outcomes.append(dict(zip(self.names, reported[0].cpu().tolist())))
        return outcomes


class QueueFull(Exception):
    """The queue holds `max_queue` items already; come back after `retry_after` seconds."""


class DynamicBatcher:
    """Collects jobs into batches and scores them one batch at a time in a dedicated thread.

    score: scores a list of jobs (runs in the model thread). max_batch: most jobs per batch.
    max_wait_s: how long a batch's first job waits for more. max_queue: most jobs reserved and not yet
    taken into a batch.
    """

    def __init__(self, score: Callable[[Sequence[Job]], list[Outcome]], max_batch: int, max_wait_s: float,
                 max_queue: int, metrics: ServerMetrics):
        self.score, self.max_batch, self.max_wait_s, self.max_queue = score, max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._reserved = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmreward-model")
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Items accepted and not yet taken into a batch (being decoded or queued)."""
        return self._reserved

    def reserve(self, count: int) -> None:
        """Admit `count` items, or raise `QueueFull`."""
        if self._reserved + count > self.max_queue:
            raise QueueFull(f"{self._reserved} items queued; {count} more would exceed max_queue={self.max_queue}")
        self._reserved += count

    def release(self, count: int) -> None:
        """Give back reservations that will not be submitted (items that failed to decode)."""
        self._reserved -= count

    async def submit(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Score reserved jobs; their outcomes in order."""
        loop = asyncio.get_running_loop()
        futures = []
        for job in jobs:
            future: asyncio.Future[Outcome] = loop.create_future()
            self._queue.put_nowait((job, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="mmreward-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[tuple[Job, asyncio.Future[Outcome]]]:
        batch = [await self._queue.get()]
        deadline = batch[0][0].enqueued + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._reserved -= len(batch)
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self.score, [job for job, _ in batch])
            except Exception as err:  # noqa: BLE001 - the scorer reports per item; this is a last resort
                outcomes = [err] * len(batch)
            self.metrics.batch_done(len(batch), time.perf_counter() - started)
            for (_, future), outcome in zip(batch, outcomes):
                if not future.done():
                    future.set_result(outcome)
