"""Deterministic data schedule: disjoint ranks, exact resume positions, curriculum phases."""

import pytest

from mmreward.training.schedule import Phase, ScheduledBatchSampler, StepSchedule


def test_ranks_split_one_global_batch_and_epochs_cover_the_pool():
    schedule = StepSchedule([Phase("all", 0, tuple(range(10, 30)))], batch_size=3, world_size=2, seed=7)
    seen = []
    for micro in range(3):  # 20 records, global batch 6: 3 batches per pass, the tail of 2 skipped
        ranks = [schedule.indices(micro, r) for r in range(2)]
        assert all(len(b) == 3 for b in ranks) and not set(ranks[0]) & set(ranks[1])
        seen += ranks[0] + ranks[1]
    assert len(set(seen)) == 18 and set(seen) <= set(range(10, 30))
    # the next pass is a new permutation, reproducible from the seed alone
    assert schedule.indices(3, 0) != schedule.indices(0, 0)
    again = StepSchedule([Phase("all", 0, tuple(range(10, 30)))], batch_size=3, world_size=2, seed=7)
    assert [again.indices(m, 1) for m in range(6)] == [schedule.indices(m, 1) for m in range(6)]
    other_seed = StepSchedule([Phase("all", 0, tuple(range(10, 30)))], batch_size=3, world_size=2, seed=8)
    assert other_seed.indices(0, 0) != schedule.indices(0, 0)


def test_resumed_sampler_reads_the_same_batches():
    schedule = StepSchedule([Phase("all", 0, tuple(range(40)))], batch_size=4, world_size=1, seed=0)
    full = list(ScheduledBatchSampler(schedule, 0, 25, rank=0))
    resumed = list(ScheduledBatchSampler(schedule, 13, 25, rank=0))
    assert len(full) == 25 and resumed == full[13:]


def test_curriculum_phases():
    warm, everything = (0, 1, 2, 3), tuple(range(100))
    schedule = StepSchedule([Phase("curriculum", 0, warm), Phase("all", 5, everything)], 2, 1, seed=0)
    assert all(set(schedule.indices(m, 0)) <= set(warm) for m in range(5))
    assert schedule.phase_name(4) == "curriculum" and schedule.phase_name(5) == "all"
    assert not set().union(*(schedule.indices(m, 0) for m in range(5, 30))) <= set(warm)


@pytest.mark.parametrize(
    "phases,match",
    [
        ([], "first phase"),
        ([Phase("a", 1, tuple(range(9)))], "first phase"),
        ([Phase("a", 0, tuple(range(9))), Phase("b", 0, tuple(range(9)))], "increasing"),
        ([Phase("tiny", 0, (1, 2))], "'tiny' has 2 records, fewer than one global batch"),
    ],
)
def test_bad_schedules(phases, match):
    with pytest.raises(ValueError, match=match):
        StepSchedule(phases, batch_size=2, world_size=2, seed=0)
