"""EPIC distance between reward functions (Gleave et al., "Quantifying Differences in Reward Functions").

1. Canonicalise each reward so potential shaping cancels:
       C(R)(s, a, s') = R(s, a, s') + E[gamma R(s', A, S') - R(s, A, S') - gamma R(S, A, S')]
   with S, S' drawn from a state coverage distribution and A from an action distribution; the
   expectations are Monte Carlo means over the given coverage samples.
2. Compare the canonical rewards on sampled transitions with the Pearson distance
       D = sqrt((1 - rho) / 2),   rho = Pearson correlation,
   which is 0 for positively affine-related rewards and 1 for a negated reward.

Reward functions are vectorised: `reward(states [N, ...], actions [N, ...], next_states [N, ...]) -> [N]`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# A sample whose spread is below this fraction of its magnitude is constant up to float rounding; its
# correlation with anything would be a correlation with rounding noise.
RELATIVE_SPREAD_TOL = 1e-9


def pearson_distance(x: np.ndarray, y: np.ndarray, scales: tuple[float, float] | None = None) -> float:
    """sqrt((1 - rho) / 2) of two equally long samples; both must vary.

    A sample counts as constant when its standard deviation is at most RELATIVE_SPREAD_TOL times its
    scale: its largest absolute value, or the given `scales` (x's, y's), the magnitude of the numbers
    each sample was computed from. EPIC passes those: a canonical reward that is zero up to rounding
    (a pure potential-shaping reward) is then refused instead of giving a distance to noise.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two samples of equal length >= 2, got {x.shape} and {y.shape}")
    own_scales = (float(np.abs(x).max()), float(np.abs(y).max()))
    for name, sample, scale in zip(("first", "second"), (x, y), scales or own_scales):
        if sample.std() <= RELATIVE_SPREAD_TOL * scale:
            raise ValueError(f"the {name} reward is constant on the samples (spread {sample.std():.3g} against a "
                             f"magnitude of {scale:.3g}); the Pearson distance is undefined. After EPIC's "
                             "canonicalisation this is a constant or pure potential-shaping reward")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    rho = float(np.clip((xc @ yc) / denom, -1.0, 1.0))
    return float(np.sqrt((1.0 - rho) / 2.0))


def _repeat_rows(a: np.ndarray, times: int) -> np.ndarray:
    return np.repeat(a, times, axis=0)


def _tile_rows(a: np.ndarray, times: int) -> np.ndarray:
    return np.tile(a, (times,) + (1,) * (a.ndim - 1))


class CanonicalReward(NamedTuple):
    values: np.ndarray  # C(R) on the N transitions
    scale: float  # the largest magnitude among the terms C(R) adds up: the scale of its rounding error


def canonicalize(
    reward: RewardFn,
    states: np.ndarray,
    actions: np.ndarray,
    next_states: np.ndarray,
    coverage_states: np.ndarray,
    coverage_actions: np.ndarray,
    gamma: float,
) -> CanonicalReward:
    """Canonical reward C(R) [N] on N transitions, expectations over M coverage pairs (S_j, A_j).

    The paper draws S, A, S' independently; here S' is the coverage states shifted by one position
    (a permutation of the same sample, so independent of its partner S in each pair). Because S and S'
    then have the same empirical mean, potential shaping cancels exactly rather than up to sampling noise.
    """
    n, m = len(states), len(coverage_states)
    if len(actions) != n or len(next_states) != n:
        raise ValueError("states, actions and next_states must have the same length")
    if len(coverage_actions) != m or m == 0:
        raise ValueError("coverage_states and coverage_actions must be non-empty and equally long")
    cov_s, cov_a = coverage_states, coverage_actions
    # Shuffled partner so that S' in E[R(S, A, S')] is not identical to S.
    cov_next = np.roll(cov_s, 1, axis=0)

    def expect_from(origins: np.ndarray) -> np.ndarray:
        # mean over j of R(origin_i, A_j, S'_j) for each origin i -> [len(origins)]
        k = len(origins)
        values = reward(_repeat_rows(origins, m), _tile_rows(cov_a, k), _tile_rows(cov_next, k))
        return np.asarray(values, dtype=np.float64).reshape(k, m).mean(axis=1)

    from_next = expect_from(next_states)  # E[R(s', A, S')]
    from_state = expect_from(states)  # E[R(s, A, S')]
    baseline = float(np.mean(np.asarray(reward(cov_s, cov_a, cov_next), dtype=np.float64)))  # E[R(S, A, S')]
    direct = np.asarray(reward(states, actions, next_states), dtype=np.float64)
    canonical = direct + gamma * from_next - from_state - gamma * baseline
    scale = max(float(np.abs(direct).max()), gamma * float(np.abs(from_next).max()),
                float(np.abs(from_state).max()), gamma * abs(baseline))
    return CanonicalReward(canonical, scale)


def epic_distance(
    reward_a: RewardFn,
    reward_b: RewardFn,
    states: np.ndarray,
    actions: np.ndarray,
    next_states: np.ndarray,
    coverage_states: np.ndarray | None = None,
    coverage_actions: np.ndarray | None = None,
    gamma: float = 0.99,
) -> float:
    """EPIC distance in [0, 1] between two rewards on the given transitions.

    Coverage samples default to the transitions' own states and actions.
    """
    cov_s = states if coverage_states is None else coverage_states
    cov_a = actions if coverage_actions is None else coverage_actions
    ca = canonicalize(reward_a, states, actions, next_states, cov_s, cov_a, gamma)
    cb = canonicalize(reward_b, states, actions, next_states, cov_s, cov_a, gamma)
    return pearson_distance(ca.values, cb.values, scales=(ca.scale, cb.scale))
