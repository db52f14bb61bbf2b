"""Dynamic batching: items of requests that arrive within a short window share one forward.

Requests put their decoded items on one queue. A worker takes the first waiting item, then more until
`max_batch` items are taken or the first one has waited `max_wait` seconds, and scores them together
(`ModelScorer`: the same encoding and batched forward as evaluation, the values of
`RewardModel.reward`), so the model runs few large forwards instead of many small ones. Scoring is a
two-stage pipeline: one thread encodes a batch (chat template, tokenizer, image and video processors:
CPU work) while another runs the previous batch through the model, so a GPU does not wait for the CPU
between batches; at most two batches are in flight. The queue is bounded: `reserve` refuses items
beyond `max_queue` (the server answers 503), before any media is decoded.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from mmreward.data.dataset import SideMedia
from mmreward.evaluation.tensor_processor import TensorProcessor
from mmreward.model import RewardModel
from mmreward.serve.metrics import ServerMetrics

Outcome = dict[str, float] | Exception  # an item's rewards by name, or why it could not be scored
PIPELINE_DEPTH = 2  # batches in flight: one being encoded, one in the model


@dataclass
class Job:
    """One item to score: its prompt, decoded side and whether to normalise its rewards."""

    prompt: str
    side: SideMedia
    normalize: bool
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Prepared:
    """A batch after encoding: the inputs of the jobs at `encoded` (positions in `jobs`), and the errors
    of the jobs that could not be encoded (None elsewhere)."""

    jobs: Sequence[Job]
    inputs: dict[str, Any] | None
    encoded: list[int]
    outcomes: list[Outcome | None]


class Scorer(Protocol):
    def prepare(self, jobs: Sequence[Job]) -> Prepared: ...

    def score(self, prepared: Prepared) -> list[Outcome]: ...


class ModelScorer:
    """Scores jobs as evaluation does: the head's encoding through `TensorProcessor` (the processor's
    tensors, built faster) and `model.rewards_of`; then each row normalised (or not) and given its
    "overall" as `RewardModel.reward` reports it. An item the model cannot take (e.g. longer than
    max_length) gets its error; the rest of its batch is scored."""

    def __init__(self, model: RewardModel):
        self.model = model
        self.names = model.output_dimensions
        self.processor = TensorProcessor(model.processor)

    def encode(self, jobs: Sequence[Job]) -> dict[str, Any]:
        return self.model.head.encode_sides(self.processor, [j.prompt for j in jobs], [j.side for j in jobs],
                                            self.model.settings.collate)

    def prepare(self, jobs: Sequence[Job]) -> Prepared:
        try:
            return Prepared(jobs, self.encode(jobs), list(range(len(jobs))), [None] * len(jobs))
        except Exception as err:  # noqa: BLE001 - reported per item, never raised into the server
            if len(jobs) == 1:
                return Prepared(jobs, None, [], [err])
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):  # find the items that fail on their own
            try:
                self.encode([job])
            except Exception as err:  # noqa: BLE001
                outcomes[i] = err
        ok = [i for i, outcome in enumerate(outcomes) if outcome is None]
        return Prepared(jobs, self.encode([jobs[i] for i in ok]) if ok else None, ok, outcomes)

    def score(self, prepared: Prepared) -> list[Outcome]:
        outcomes = list(prepared.outcomes)
        if prepared.inputs is not None:
            try:
                raw = self.model.rewards_of(prepared.inputs)
            except Exception as err:  # noqa: BLE001
                if len(prepared.encoded) == 1:
                    outcomes[prepared.encoded[0]] = err
                else:
                    for i in prepared.encoded:
                        outcomes[i] = self(prepared.jobs[i:i + 1])[0]
            else:
                for i, row in zip(prepared.encoded, raw):
                    outcomes[i] = self._reported(row[None], prepared.jobs[i].normalize)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _reported(self, row: Any, normalize: bool) -> dict[str, float]:
        model = self.model
        reported = model.with_overall(model.normalize(row) if normalize else row.double())
        return dict(zip(self.names, reported[0].cpu().tolist()))

    def __call__(self, jobs: Sequence[Job]) -> list[Outcome]:
        return self.score(self.prepare(jobs))


class QueueFull(Exception):
    """The queue holds `max_queue` items already; come back after `retry_after` seconds."""


class DynamicBatcher:
    """Collects jobs into batches and scores them through the encode / model pipeline.

    scorer: `prepare` runs in the encoding thread, `score` in the model thread. max_batch: most jobs per
    batch. max_wait_s: how long a batch's first job waits for more. max_queue: most jobs reserved and
    not yet taken into a batch.
    """

    def __init__(self, scorer: Scorer, max_batch: int, max_wait_s: float, max_queue: int, metrics: ServerMetrics):
        self.scorer, self.max_batch, self.max_wait_s, self.max_queue = scorer, max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._reserved = 0
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmreward-encode")
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmreward-model")
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

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
        """Cancel the worker (the server has answered everything by now) and end the threads."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, *self._in_flight, return_exceptions=True)
        self._encoder.shutdown(wait=True)
        self._model.shutdown(wait=True)

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
        slots = asyncio.Semaphore(PIPELINE_DEPTH)
        encoder_free = asyncio.Semaphore(1)
        while True:
            # A batch is taken only once the pipeline has room and the encoder is free: items arriving
            # meanwhile join it, so batches are as large as the model's pace allows.
            await slots.acquire()
            await encoder_free.acquire()
            batch = await self._next_batch()
            self._reserved -= len(batch)
            task = asyncio.get_running_loop().create_task(self._process(batch, slots, encoder_free))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _process(self, batch: list[tuple[Job, asyncio.Future[Outcome]]], slots: asyncio.Semaphore,
                       encoder_free: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        jobs = [job for job, _ in batch]
        started = time.perf_counter()
        encoding = True
        try:
            prepared = await loop.run_in_executor(self._encoder, self.scorer.prepare, jobs)
            encoder_free.release()
            encoding = False
            outcomes = await loop.run_in_executor(self._model, self.scorer.score, prepared)
        except Exception as err:  # noqa: BLE001 - the scorer reports per item; this is a last resort
            outcomes = [err] * len(batch)
        finally:
            if encoding:
                encoder_free.release()
            slots.release()
        self.metrics.batch_done(len(batch), time.perf_counter() - started)
        for (_, future), outcome in zip(batch, outcomes):
            if not future.done():
                future.set_result(outcome)
