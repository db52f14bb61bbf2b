"""Pairwise preference metrics, comparable to the published reward-model tables.

Conventions: ``delta = score_a - score_b`` (a judge's verdict may be passed as +1 / -1 / 0) and
``labels`` in ``{1: a better, -1: b better, 0: tie}``.

- Accuracy without ties (VideoGen-RewardBench "w/o ties", VL-RewardBench, Multimodal
  RewardBench, MM-RLHF "Acc"): tie-labelled pairs are left out, the prediction is
  ``sign(delta)`` and ``delta == 0`` counts as wrong.
- Accuracy with ties (VideoGen-RewardBench "w/ ties"): the tie calibration of Deutsch et al.
  2023 ("Ties Matter", arXiv:2305.14324, Algorithm 1) that VideoAlign uses: predict a tie where
  ``|delta| <= t``, otherwise ``sign(delta)``, and take the best accuracy over all thresholds
  ``t in {-1} U {|delta_i|}``. Unlike a pair-by-pair sweep, pairs with equal ``|delta|`` switch
  together here, so the result does not depend on the order of the input.
- Acc+ (MM-RLHF-RewardBench): an item counts as right only if all of its pairs are right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


def _as_pairs(delta: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(delta, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"delta and labels differ in length: {d.size} vs {y.size}")
    if d.size == 0:
        raise ValueError("no pairs given")
    if not np.all(np.isfinite(d)):
        raise ValueError("delta contains NaN or inf")
    if not np.all(np.isin(y, (-1, 0, 1))):
        raise ValueError(f"labels must be in {{1, -1, 0}}, got values {sorted(set(y.tolist()))}")
    return d, y.astype(np.int64)


def pair_correct(delta: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-pair correctness without ties: ``sign(delta) == label``; False for tie labels and delta 0."""
    d, y = _as_pairs(delta, labels)
    return (y != 0) & (np.sign(d) == y)


def pair_accuracy(delta: ArrayLike, labels: ArrayLike, with_ties: bool = False) -> float:
    """Pairwise accuracy; ``with_ties`` selects the tie-calibrated accuracy of :func:`tie_calibration`."""
    if with_ties:
        return accuracy_with_ties(delta, labels)
    d, y = _as_pairs(delta, labels)
    decisive = y != 0
    if not decisive.any():
        raise ValueError("accuracy without ties needs at least one pair labelled 1 or -1")
    return float(np.mean(np.sign(d[decisive]) == y[decisive]))


def accuracy_with_ties(delta: ArrayLike, labels: ArrayLike) -> float:
    """The tie-calibrated three-way accuracy (VideoGen-RewardBench "w/ ties"; see :func:`tie_calibration`)."""
    return tie_calibration(delta, labels)[0]


def tie_calibration(delta: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best three-way accuracy over tie thresholds and the (smallest) threshold reaching it.

    For threshold ``t`` the prediction is 0 where ``|delta| <= t`` and ``sign(delta)`` elsewhere;
    ``t`` ranges over -1 (no forced ties; ``delta == 0`` still predicts a tie) and every
    ``|delta|`` value. Returns ``(accuracy, t)``.
    """
    d, y = _as_pairs(delta, labels)
    n = d.size
    mag = np.abs(d)
    right_if_tie = (y == 0).astype(np.int64)
    right_if_sign = (np.sign(d) == y).astype(np.int64)

    order = np.argsort(mag, kind="stable")
    mag_sorted = mag[order]
    # Pairs with |delta| <= t are predicted tie, the rest keep sign(delta).
    tie_hits = np.cumsum(right_if_tie[order])
    sign_hits_above = right_if_sign.sum() - np.cumsum(right_if_sign[order])
    # Evaluate only at the last pair of each run of equal |delta| so equal values move together.
    last_of_run = np.append(mag_sorted[1:] != mag_sorted[:-1], True)
    correct = np.concatenate(([right_if_sign.sum()], (tie_hits + sign_hits_above)[last_of_run]))
    thresholds = np.concatenate(([-1.0], mag_sorted[last_of_run]))
    best = int(np.argmax(correct))  # first maximum = smallest threshold
    return float(correct[best] / n), float(thresholds[best])


def per_dimension_accuracy(
    deltas: Mapping[str, ArrayLike],
    labels: Mapping[str, ArrayLike],
    with_ties: bool = False,
    masks: Mapping[str, ArrayLike] | None = None,
) -> dict[str, float]:
    """:func:`pair_accuracy` for each dimension; ``masks[dim]`` (bool) keeps only labeled pairs."""
    if set(deltas) != set(labels):
        raise ValueError(f"deltas and labels name different dimensions: {sorted(deltas)} vs {sorted(labels)}")
    out = {}
    for dim in deltas:
        d = np.asarray(deltas[dim], dtype=np.float64).reshape(-1)
        y = np.asarray(labels[dim]).reshape(-1)
        if masks is not None and dim in masks:
            keep = np.asarray(masks[dim], dtype=bool).reshape(-1)
            if keep.shape != d.shape:
                raise ValueError(f"mask of dimension {dim!r} has {keep.size} entries for {d.size} pairs")
            d, y = d[keep], y[keep]
        try:
            out[dim] = pair_accuracy(d, y, with_ties=with_ties)
        except ValueError as err:
            raise ValueError(f"dimension {dim!r}: {err}") from None
    return out


def acc_plus(delta: ArrayLike, labels: ArrayLike, item_ids: ArrayLike) -> float:
    """Fraction of items whose decisive pairs are all right (pairs grouped by ``item_ids``).

    Tie-labelled pairs are left out; an item with only tie-labelled pairs does not count.
    """
    correct = pair_correct(delta, labels)
    y = np.asarray(labels).reshape(-1)
    ids = np.asarray(item_ids).reshape(-1)
    if ids.shape != correct.shape:
        raise ValueError(f"item_ids has {ids.size} entries for {correct.size} pairs")
    decisive = y != 0
    if not decisive.any():
        raise ValueError("Acc+ needs at least one pair labelled 1 or -1")
    items, inverse = np.unique(ids[decisive], return_inverse=True)
    wrong_per_item = np.bincount(inverse, weights=(~correct[decisive]).astype(np.float64), minlength=items.size)
    return float(np.mean(wrong_per_item == 0))


def position_flip_rate(delta_ab: ArrayLike, delta_ba: ArrayLike) -> float:
    """How often a judge's verdict changes when the two candidates swap places.

    ``delta_ab`` scores the pair shown as (a, b), ``delta_ba`` the same pair shown as (b, a), both
    as "first minus second" (or a +1 / -1 / 0 verdict for the first). The verdict is consistent
    when ``sign(delta_ab) == -sign(delta_ba)``; a tie in one order and a preference in the other
    counts as a flip.
    """
    ab = np.asarray(delta_ab, dtype=np.float64).reshape(-1)
    ba = np.asarray(delta_ba, dtype=np.float64).reshape(-1)
    if ab.shape != ba.shape:
        raise ValueError(f"delta_ab and delta_ba differ in length: {ab.size} vs {ba.size}")
    if ab.size == 0:
        raise ValueError("no pairs given")
    if not (np.all(np.isfinite(ab)) and np.all(np.isfinite(ba))):
        raise ValueError("scores contain NaN or inf")
    return float(np.mean(np.sign(ab) != -np.sign(ba)))


@dataclass(frozen=True)
class ConfidenceInterval:
    """A metric on the full data and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    confidence: float


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: ArrayLike,
    group_by: int | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric(*arrays)``.

    The arrays are aligned per pair and resampled together with replacement (numpy
    ``default_rng(seed)``, so the interval is reproducible). ``group_by`` names the position of
    an array in ``arrays`` that holds group ids (e.g. item ids for :func:`acc_plus`): whole groups
    are then resampled, and in each resample that array holds the draw number, so a group drawn
    twice counts as two groups. Resamples where the metric is undefined (it raises
    ``ValueError``, e.g. no decisive pair drawn) are skipped.

    :func:`pair_accuracy`, :func:`accuracy_with_ties` and :func:`acc_plus` (grouped by its item
    ids) are evaluated from how often each pair or group was drawn, without building the resampled
    arrays or sorting again: the same values as the general path, at O(n) per resample.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    cols = [np.asarray(a).reshape(-1) for a in arrays]
    if not cols or len({c.size for c in cols}) != 1:
        raise ValueError("bootstrap_ci needs one or more arrays of equal length")
    if group_by is not None and not 0 <= group_by < len(cols):
        raise ValueError(f"group_by={group_by} does not name one of the {len(cols)} arrays")
    estimate = float(metric(*cols))
    rng = np.random.default_rng(seed)

    if group_by is None:
        group_of = None
        sizes = np.ones(cols[0].size, dtype=np.int64)
    else:
        _, group_of = np.unique(cols[group_by], return_inverse=True)
        group_of = group_of.reshape(-1)
        sizes = np.bincount(group_of)
    from_counts = _counts_form(metric, cols, group_of, group_by)
    if from_counts is None:
        resample = _Gather(cols, group_of, sizes, group_by)

    values = []
    for _ in range(n_resamples):
        picks = rng.integers(0, sizes.size, size=sizes.size)
        try:
            if from_counts is not None:
                values.append(from_counts(np.bincount(picks, minlength=sizes.size)))
            else:
                values.append(float(metric(*resample(picks))))
        except ValueError:
            continue
    if not values:
        raise ValueError("the metric was undefined on every bootstrap resample")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return ConfidenceInterval(estimate, float(low), float(high), confidence)


class _Gather:
    """The resampled arrays for drawn units (pairs, or groups in group order), built without a
    Python loop over the draws: each group's pairs in file order, groups in draw order."""

    def __init__(self, cols: list[np.ndarray], group_of: np.ndarray | None, sizes: np.ndarray, group_by: int | None):
        self.cols, self.sizes, self.group_by = cols, sizes, group_by
        if group_of is not None:
            self.members = np.argsort(group_of, kind="stable")  # pairs of group 0, then of group 1, ...
            self.starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    def __call__(self, picks: np.ndarray) -> list[np.ndarray]:
        if self.group_by is None:
            return [c[picks] for c in self.cols]
        lengths = self.sizes[picks]
        # Position of every resampled pair inside `members`: its group's start plus its rank in the group.
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = self.members[np.repeat(self.starts[picks], lengths) + np.arange(first.size) - first]
        sample = [c[idx] for c in self.cols]
        sample[self.group_by] = np.repeat(np.arange(picks.size), lengths)
        return sample


def _count_ratio(hits: np.ndarray, units: np.ndarray, undefined: str) -> Callable[[np.ndarray], float]:
    """Draw counts -> (counts @ hits) / (counts @ units), in integers as the metric counts them;
    ``ValueError(undefined)`` when no unit that counts was drawn."""

    def value(counts: np.ndarray) -> float:
        n = int(counts @ units)
        if n == 0:
            raise ValueError(undefined)
        return int(counts @ hits) / n

    return value


def _accuracy_from_counts(delta: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], float]:
    """:func:`pair_accuracy` of a resample, given how often each pair was drawn."""
    d, y = _as_pairs(delta, labels)
    decisive = (y != 0).astype(np.int64)
    return _count_ratio(decisive * (np.sign(d) == y), decisive,
                        "accuracy without ties needs at least one pair labelled 1 or -1")


def _ties_from_counts(delta: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], float]:
    """:func:`accuracy_with_ties` of a resample, given how often each pair was drawn.

    The pairs are sorted by |delta| once. At the end of each run of equal |delta| the count right is
    (sign hits of all pairs) + (tie hits - sign hits up to there); a run missing from a resample
    repeats the previous count, which cannot change the maximum."""
    d, y = _as_pairs(delta, labels)
    order = np.argsort(np.abs(d), kind="stable")
    mag_sorted = np.abs(d)[order]
    last_of_run = np.append(mag_sorted[1:] != mag_sorted[:-1], True)
    right_if_sign = (np.sign(d[order]) == y[order]).astype(np.int64)
    tie_gain = (y[order] == 0).astype(np.int64) - right_if_sign

    def value(counts: np.ndarray) -> float:
        w = counts[order]
        best_gain = int(np.cumsum(w * tie_gain)[last_of_run].max())
        return (int(w @ right_if_sign) + max(0, best_gain)) / int(w.sum())

    return value


def _acc_plus_from_counts(delta: np.ndarray, labels: np.ndarray, group_of: np.ndarray) -> Callable[[np.ndarray], float]:
    """:func:`acc_plus` of a resample of whole items, given how often each item was drawn: every
    drawn copy is one item, so Acc+ = sum(copies * all right) / sum(copies * has a decisive pair)."""
    correct = pair_correct(delta, labels)
    decisive = np.asarray(labels).reshape(-1) != 0
    groups = int(group_of.max()) + 1
    has_decisive = np.bincount(group_of, weights=decisive, minlength=groups) > 0
    all_right = has_decisive & (np.bincount(group_of, weights=decisive & ~correct, minlength=groups) == 0)
    return _count_ratio(all_right.astype(np.int64), has_decisive.astype(np.int64),
                        "Acc+ needs at least one pair labelled 1 or -1")


def _counts_form(
    metric: Callable[..., float], cols: list[np.ndarray], group_of: np.ndarray | None, group_by: int | None
) -> Callable[[np.ndarray], float] | None:
    """The draw-count form of a built-in metric, or None where only the general path is exact (the
    general path hands the metric draw numbers in place of the grouping array)."""
    if metric in (pair_accuracy, accuracy_with_ties) and len(cols) == 2 and group_by is None:
        return (_accuracy_from_counts if metric is pair_accuracy else _ties_from_counts)(*cols)
    if metric is acc_plus and len(cols) == 3 and group_by == 2:
        return _acc_plus_from_counts(cols[0], cols[1], group_of)
    return None
