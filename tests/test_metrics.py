"""Exact-value tests for mmreward.metrics (expected values worked out by hand in the comments)."""

import itertools
import runpy
from pathlib import Path

import numpy as np
import pytest

from mmreward.metrics import (
    ConfidenceInterval,
    acc_plus,
    accuracy_with_ties,
    bootstrap_ci,
    pair_accuracy,
    pair_correct,
    per_dimension_accuracy,
    position_flip_rate,
    tie_calibration,
)

# |delta| = 0.1 0.1 0.5 2 3 0; right if tie: 1 1 0 0 0 1; right if sign(delta): 0 0 1 1 0 1.
# t=-1: 3/6, t=0: 1 + 2 = 3/6, t=0.1: 3 + 2 = 5/6, t=0.5: 3 + 1 = 4/6, t=2: 3/6, t=3: 3/6.
DELTA = [0.1, -0.1, 0.5, -2.0, 3.0, 0.0]
LABELS = [0, 0, 1, -1, -1, 0]


def test_accuracy_without_ties():
    # Decisive pairs: 1 right, -2 right, 0 counts as wrong, 0.5 vs -1 wrong; the tie is left out.
    assert pair_accuracy([1.0, -2.0, 0.0, 3.0, 0.5], [1, -1, 1, 0, -1]) == 0.5
    assert pair_correct([1.0, -2.0, 0.0, 3.0, 0.5], [1, -1, 1, 0, -1]).tolist() == [True, True, False, False, False]


def test_tie_calibration_hand_example():
    assert tie_calibration(DELTA, LABELS) == (5 / 6, 0.1)
    assert pair_accuracy(DELTA, LABELS, with_ties=True) == 5 / 6


def test_tie_calibration_is_order_independent():
    expected = tie_calibration(DELTA, LABELS)
    for perm in itertools.permutations(range(len(DELTA))):
        assert tie_calibration([DELTA[i] for i in perm], [LABELS[i] for i in perm]) == expected


def test_equal_magnitudes_move_together():
    # Both pairs have |delta| = 0.2. A pair-by-pair sweep would reach 2/2 after switching only
    # the first one to "tie"; here the candidates are t=-1 (1/2) and t=0.2 (1/2).
    assert tie_calibration([0.2, 0.2], [0, 1]) == (0.5, -1.0)
    assert tie_calibration([0.2, 0.2], [1, 0]) == (0.5, -1.0)
    assert tie_calibration([0.2, -0.2], [0, 0]) == (1.0, 0.2)


def test_tie_calibration_zero_delta_is_a_tie_even_at_minus_one():
    # t=-1 keeps sign(0) = 0, a correct tie prediction: 2/2 without forcing any tie.
    assert tie_calibration([0.0, 1.0], [0, 1]) == (1.0, -1.0)


def test_per_dimension_accuracy_with_masks():
    deltas = {"VQ": [1.0, -1.0, 2.0], "TA": [1.0, 1.0, -1.0]}
    labels = {"VQ": [1, 1, 1], "TA": [1, 0, 1]}
    # VQ: right, wrong, right = 2/3. TA with the last pair masked out: 1 right, 1 tie -> 1/1.
    out = per_dimension_accuracy(deltas, labels, masks={"TA": [True, True, False]})
    assert out == {"VQ": 2 / 3, "TA": 1.0}
    # With ties, TA (masked): t=-1 gives right + wrong, t=1 gives wrong + right -> 1/2 at t=-1.
    assert per_dimension_accuracy(deltas, labels, with_ties=True, masks={"TA": [1, 1, 0]})["TA"] == 0.5
    with pytest.raises(ValueError, match="dimension 'TA'"):
        per_dimension_accuracy({"TA": [1.0]}, {"TA": [0]})


def test_acc_plus_groups_by_item():
    delta = [1.0, 2.0, -1.0, 0.5, -0.5, 3.0]
    labels = [1, 1, 1, 1, -1, 0]
    items = ["a", "a", "a", "b", "b", "c"]
    # a has a wrong pair, b is all right, c has only a tie pair and does not count -> 1/2.
    assert acc_plus(delta, labels, items) == 0.5
    # Pairs of one item need not be adjacent.
    order = [5, 3, 0, 4, 2, 1]
    assert acc_plus([delta[i] for i in order], [labels[i] for i in order], [items[i] for i in order]) == 0.5


def test_position_flip_rate():
    # (1,-1) same winner; (2,3) flip; (-1,1) same; (0,0) tie both ways; (0.5,0) flip -> 2/5.
    assert position_flip_rate([1.0, 2.0, -1.0, 0.0, 0.5], [-1.0, 3.0, 1.0, 0.0, 0.0]) == 0.4
    assert position_flip_rate([1, -1], [-1, 1]) == 0.0


def test_bootstrap_constant_metric_and_reproducibility():
    delta = np.ones(50)
    labels = np.ones(50, dtype=int)
    assert bootstrap_ci(pair_accuracy, delta, labels, n_resamples=200) == ConfidenceInterval(1.0, 1.0, 1.0, 0.95)

    rng = np.random.default_rng(123)
    labels = rng.choice([-1, 1], size=400)
    delta = np.where(rng.random(400) < 0.75, labels, -labels).astype(float)
    ci = bootstrap_ci(pair_accuracy, delta, labels, n_resamples=2000, seed=7)
    assert ci == bootstrap_ci(pair_accuracy, delta, labels, n_resamples=2000, seed=7)
    assert ci != bootstrap_ci(pair_accuracy, delta, labels, n_resamples=2000, seed=8)
    # Binomial standard error: 1.96 * sqrt(p (1 - p) / 400) is about 0.042 at p = 0.75.
    half_width = 1.96 * np.sqrt(ci.estimate * (1 - ci.estimate) / 400)
    assert ci.low == pytest.approx(ci.estimate - half_width, abs=0.012)
    assert ci.high == pytest.approx(ci.estimate + half_width, abs=0.012)


def test_grouped_bootstrap_keeps_redrawn_groups_apart():
    ids = np.repeat(np.arange(30), 2)  # 30 items with 2 pairs each
    # Two pairs per group in every resample means every drawn group kept its own id.
    ci = bootstrap_ci(lambda g: np.unique(g).size * 2 / g.size, ids, group_by=0, n_resamples=100)
    assert (ci.low, ci.high) == (1.0, 1.0)
    labels = np.ones(60, dtype=int)
    delta = np.where(np.arange(60) % 4 == 0, -1.0, 1.0)  # every other item has one wrong pair
    ci = bootstrap_ci(acc_plus, delta, labels, ids, group_by=2, n_resamples=500)
    assert ci.estimate == 0.5
    assert ci.low < 0.5 < ci.high


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pair_accuracy([1.0], [2]), "labels must be in"),
        (lambda: pair_accuracy([1.0, 2.0], [1]), "differ in length"),
        (lambda: pair_accuracy([float("nan")], [1]), "NaN"),
        (lambda: pair_accuracy([1.0], [0]), "at least one pair"),
        (lambda: tie_calibration([], []), "no pairs"),
        (lambda: acc_plus([1.0], [1], ["a", "b"]), "item_ids"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], confidence=1.5), "confidence"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], confidence=0.0), "confidence"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], confidence=1.0), "confidence"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], n_resamples=0), "n_resamples"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], n_resamples=-3), "n_resamples"),
        (lambda: position_flip_rate([float("nan"), 1.0], [1.0, -1.0]), "NaN"),
        (lambda: position_flip_rate([1.0, -1.0], [1.0, float("nan")]), "NaN"),
        (lambda: position_flip_rate([1.0], [float("inf")]), "inf"),
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], group_by=3), "group_by"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_runs_of_three_equal_magnitudes_move_together():
    # |delta| = 0.2 (three pairs), 1. Right if tie: 1 1 0 0; right if sign: 0 0 1 1.
    # t=-1: 2/4; t=0.2: 2 ties right + the last pair = 3/4; t=1: 2/4. A sweep that stopped inside the
    # run (after the first two pairs) would claim 4/4.
    assert tie_calibration([0.2, -0.2, 0.2, 1.0], [0, 0, 1, 1]) == (0.75, 0.2)
    assert tie_calibration([1.0, 0.2, 0.2, -0.2], [1, 1, 0, 0]) == (0.75, 0.2)
    assert accuracy_with_ties([0.2, -0.2, 0.2, 1.0], [0, 0, 1, 1]) == 0.75


# The per-resample loop bootstrap_ci replaced: bench/scale_costs.py keeps it as its baseline.
_loop_bootstrap = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "scale_costs.py"))["loop_bootstrap"]


def _order_sensitive(delta, labels, items):
    # Not a function of the multiset of pairs: only the general (gathering) path can give it exactly.
    return float(np.mean(delta[: delta.size // 2] > 0)) + 0.01 * float(items[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_equals_the_loop_it_replaced(seed):
    rng = np.random.default_rng(100 + seed)
    n = 90
    labels = rng.choice([-1, 0, 1], size=n, p=[0.4, 0.2, 0.4])
    delta = np.round(rng.normal(size=n), 1)  # one decimal: many runs of equal |delta|, some of 3+
    delta[:5] = 0.0
    items = np.sort(rng.integers(0, 25, size=n))[rng.permutation(n)]  # items of 1-8 pairs, scattered
    cases = [
        (pair_accuracy, (delta, labels), None),
        (accuracy_with_ties, (delta, labels), None),
        (lambda d, y, g: pair_accuracy(d, y), (delta, labels, items), None),  # not a built-in: general path
        (acc_plus, (delta, labels, items), 2),
        (acc_plus, (delta, labels, items), None),  # pairs resampled, items merge: general path
        (_order_sensitive, (delta, labels, items), 2),
        (lambda d, y, g: accuracy_with_ties(d, y), (delta, labels, items), 2),
    ]
    for metric, arrays, group_by in cases:
        for conf in (0.95, 0.5):
            got = bootstrap_ci(metric, *arrays, group_by=group_by, n_resamples=300, confidence=conf, seed=seed)
            assert got == _loop_bootstrap(metric, *arrays, group_by=group_by, n_resamples=300, confidence=conf,
                                          seed=seed), (metric, group_by, conf)


def test_bootstrap_with_ties_when_no_forced_tie_helps():
    # Every pair decisive and rightly signed: the best threshold is t = -1 in every resample (1.0),
    # and any forced tie costs a pair.
    rng = np.random.default_rng(5)
    labels = rng.choice([-1, 1], size=40)
    delta = labels * rng.uniform(0.1, 2.0, size=40)
    ci = bootstrap_ci(accuracy_with_ties, delta, labels, n_resamples=50)
    assert ci == ConfidenceInterval(1.0, 1.0, 1.0, 0.95)
    assert ci == _loop_bootstrap(accuracy_with_ties, delta, labels, n_resamples=50)


def test_bootstrap_skips_undefined_resamples_as_the_loop_did():
    # One decisive pair among twelve ties: most resamples miss it and accuracy is undefined there.
    delta = np.linspace(-1, 1, 13)
    labels = np.zeros(13, dtype=int)
    labels[3] = -1
    ci = bootstrap_ci(pair_accuracy, delta, labels, n_resamples=400, seed=3)
    assert ci == _loop_bootstrap(pair_accuracy, delta, labels, n_resamples=400, seed=3)
    items = np.arange(13) // 2
    assert (bootstrap_ci(acc_plus, delta, labels, items, group_by=2, n_resamples=400, seed=3)
            == _loop_bootstrap(acc_plus, delta, labels, items, group_by=2, n_resamples=400, seed=3))

    def only_on_the_full_data(d):
        if np.unique(d).size != d.size:  # every resample of 40 pairs repeats one
            raise ValueError("undefined")
        return 1.0

    with pytest.raises(ValueError, match="undefined on every bootstrap resample"):
        bootstrap_ci(only_on_the_full_data, np.arange(40.0), n_resamples=20)


def test_grouped_bootstrap_draws_the_last_group():
    # Five groups; the metric is the share of pairs from the last one (group id 4, 3 of 7 pairs).
    ids = np.array([0, 1, 2, 3, 4, 4, 4])
    share = bootstrap_ci(lambda g: float(np.mean(g == 4)), ids, n_resamples=400, confidence=0.9)
    assert share.estimate == 3 / 7 and share.high > 0.6 and share.low < 0.2
    # Grouped: drawn copies get draw numbers, so measure the size of the largest drawn copy instead.
    biggest = bootstrap_ci(lambda g: float(np.bincount(g).max()), ids, group_by=0, n_resamples=200, confidence=0.5)
    assert biggest.estimate == 3.0 and biggest.high == 3.0  # the 3-pair group is drawn in most resamples


def test_bootstrap_at_scale_is_fast():
    """100k pairs in 50k items, 100 resamples of each metric: about a second (the loop it replaced
    took 0.3-1 s per resample and metric at this size)."""
    import time

    rng = np.random.default_rng(0)
    n = 100_000
    labels = rng.choice([-1, 0, 1], size=n)
    delta = rng.normal(size=n)
    items = np.arange(n) // 2
    start = time.perf_counter()
    for metric, arrays, group_by in ((pair_accuracy, (delta, labels), None),
                                     (accuracy_with_ties, (delta, labels), None),
                                     (acc_plus, (delta, labels, items), 2)):
        ci = bootstrap_ci(metric, *arrays, group_by=group_by, n_resamples=100)
        assert ci.low < ci.estimate < ci.high
    assert time.perf_counter() - start < 10.0
