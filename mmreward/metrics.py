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
        return tie_calibration(delta, labels)[0]
    d, y = _as_pairs(delta, labels)
    decisive = y != 0
    if not decisive.any():
        raise ValueError("accuracy without ties needs at least one pair labelled 1 or -1")
    return float(np.mean(np.sign(d[decisive]) == y[decisive]))


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
    n = cols[0].size
    estimate = float(metric(*cols))
    rng = np.random.default_rng(seed)

    if group_by is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(cols[group_by], return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]

    values = []
    for _ in range(n_resamples):
        picks = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[k] for k in picks])
        sample = [c[idx] for c in cols]
        if group_by is not None:
            sample[group_by] = np.repeat(np.arange(picks.size), [members[k].size for k in picks])
        try:
            values.append(float(metric(*sample)))
        except ValueError:
            continue
    if not values:
        raise ValueError("the metric was undefined on every bootstrap resample")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return ConfidenceInterval(estimate, float(low), float(high), confidence)
