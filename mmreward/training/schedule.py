"""Deterministic data order: which records each process reads at each micro-step.

The order is a pure function of (seed, phase, epoch, micro-step, rank), so a run resumed at step
`s` reads exactly the batches an uninterrupted run reads from step `s` on, and DDP ranks read
disjoint slices of one global batch. Phases implement a curriculum: a warm-up pool (e.g. only
quality pairs) for the first micro-steps, then the full set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch.utils.data

from mmreward.errors import MmrewardError


class ScheduleError(MmrewardError, ValueError):
    """The training data cannot fill the schedule asked for (a phase smaller than one global batch, an empty
    curriculum pool)."""


@dataclass(frozen=True)
class Phase:
    """From micro-step `start` on (until the next phase), batches are drawn from `pool` (record indices)."""

    name: str
    start: int
    pool: tuple[int, ...]


class StepSchedule:
    """Global batches of `batch_size * world_size` records, reshuffled every pass over a phase's pool."""

    def __init__(self, phases: Sequence[Phase], batch_size: int, world_size: int, seed: int):
        if not phases or phases[0].start != 0:
            raise ValueError("the first phase must start at micro-step 0")
        if any(b.start <= a.start for a, b in zip(phases, phases[1:])):
            raise ValueError("phases must start at increasing micro-steps")
        self.phases = list(phases)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        global_batch = batch_size * world_size
        for phase in self.phases:
            if len(phase.pool) < global_batch:
                raise ScheduleError(
                    f"phase {phase.name!r} has {len(phase.pool)} records, fewer than one global batch "
                    f"({batch_size} pairs x {world_size} processes): lower --batch_size or use more pairs"
                )

    def _phase(self, micro: int) -> tuple[int, Phase]:
        number = max(i for i, p in enumerate(self.phases) if p.start <= micro)
        return number, self.phases[number]

    def phase_name(self, micro: int) -> str:
        return self._phase(micro)[1].name

    def indices(self, micro: int, rank: int) -> list[int]:
        """Record indices read by process `rank` at micro-step `micro`."""
        number, phase = self._phase(micro)
        global_batch = self.batch_size * self.world_size
        per_epoch = len(phase.pool) // global_batch  # the incomplete tail of each pass is skipped
        epoch, position = divmod(micro - phase.start, per_epoch)
        rng = np.random.default_rng([self.seed, number, epoch])
        order = rng.permutation(len(phase.pool))
        chosen = order[position * global_batch : (position + 1) * global_batch]
        mine = chosen[rank * self.batch_size : (rank + 1) * self.batch_size]
        return [phase.pool[i] for i in mine.tolist()]


class ScheduledBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A DataLoader `batch_sampler` yielding this process's batches for micro-steps [start, stop)."""

    def __init__(self, schedule: StepSchedule, start: int, stop: int, rank: int):
        self.schedule, self.start, self.stop, self.rank = schedule, start, stop, rank

    def __iter__(self) -> Iterator[list[int]]:
        for micro in range(self.start, self.stop):
            yield self.schedule.indices(micro, self.rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
