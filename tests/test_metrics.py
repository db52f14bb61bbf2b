"""Exact-value tests for mmreward.metrics (expected values worked out by hand in the comments)."""

import itertools

import numpy as np
import pytest

from mmreward.metrics import (
    ConfidenceInterval,
    acc_plus,
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
        (lambda: bootstrap_ci(pair_accuracy, [1.0], [1], group_by=3), "group_by"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
