"""EPIC distance: invariances (affine, potential shaping), negation, Pearson distance values."""

import numpy as np
import pytest

from vlm_rm.epic import canonicalize, epic_distance, pearson_distance

GAMMA = 0.9


@pytest.fixture(scope="module")
def transitions():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(64, 3))
    actions = rng.normal(size=(64, 2))
    next_states = states + 0.1 * rng.normal(size=(64, 3))
    return states, actions, next_states


def reward(s, a, s2):
    return np.sin(s[:, 0]) + s2[:, 1] ** 2 - 0.5 * (a ** 2).sum(axis=1)


def potential(s):
    return 10.0 * s[:, 2] + 5.0 * np.cos(s[:, 0])


def shaped(s, a, s2):
    return reward(s, a, s2) + GAMMA * potential(s2) - potential(s)


def test_identical_and_positive_affine_rewards_are_at_distance_zero(transitions):
    assert epic_distance(reward, reward, *transitions, gamma=GAMMA) == pytest.approx(0.0, abs=1e-6)
    affine = lambda s, a, s2: 2.5 * reward(s, a, s2) + 7.0  # noqa: E731
    assert epic_distance(reward, affine, *transitions, gamma=GAMMA) == pytest.approx(0.0, abs=1e-6)


def test_potential_shaping_leaves_the_distance_unchanged(transitions):
    assert epic_distance(reward, shaped, *transitions, gamma=GAMMA) == pytest.approx(0.0, abs=1e-6)
    # ...although the raw rewards are far from each other
    raw = pearson_distance(reward(*transitions), shaped(*transitions))
    assert raw > 0.2
    other = lambda s, a, s2: np.cos(s[:, 1]) * s2[:, 0]  # noqa: E731
    assert epic_distance(other, shaped, *transitions, gamma=GAMMA) == pytest.approx(
        epic_distance(other, reward, *transitions, gamma=GAMMA), abs=1e-9)


def test_negated_reward_is_at_distance_one(transitions):
    negated = lambda s, a, s2: -reward(s, a, s2)  # noqa: E731
    assert epic_distance(reward, negated, *transitions, gamma=GAMMA) == pytest.approx(1.0, abs=1e-6)


def test_pearson_distance_exact_values_and_errors():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson_distance(x, x) == 0.0
    assert pearson_distance(x, -x) == 1.0
    assert pearson_distance(x, np.array([1.0, -1.0, -1.0, 1.0])) == pytest.approx(np.sqrt(0.5))  # rho = 0
    with pytest.raises(ValueError, match="constant"):
        pearson_distance(x, np.ones(4))
    with pytest.raises(ValueError, match="equal length"):
        pearson_distance(x, x[:3])


def test_a_pure_potential_shaping_reward_is_refused_not_measured(transitions):
    """Canonicalised, pure shaping is zero up to rounding (spread ~1e-15); its 'distance' would be to noise."""
    pure_shaping = lambda s, a, s2: GAMMA * potential(s2) - potential(s)  # noqa: E731
    with pytest.raises(ValueError, match="constant or pure potential-shaping"):
        epic_distance(reward, pure_shaping, *transitions, gamma=GAMMA)
    with pytest.raises(ValueError, match="second reward is constant"):
        epic_distance(reward, lambda s, a, s2: np.full(len(s), 3.0), *transitions, gamma=GAMMA)


def test_pearson_distance_refuses_a_sample_constant_up_to_rounding():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    near_constant = 5.0 + np.array([0.0, 1.0, -1.0, 2.0]) * np.spacing(5.0)
    with pytest.raises(ValueError, match="second reward is constant"):
        pearson_distance(x, near_constant)
    noise = np.array([1.0, -2.0, 0.5, 1.5]) * 1e-15
    assert pearson_distance(x, noise) < 1.0  # on its own scale, noise is a sample like any other...
    with pytest.raises(ValueError, match="second reward is constant"):
        pearson_distance(x, noise, scales=(4.0, 10.0))  # ...but not against the numbers it came from
    assert pearson_distance(x, 1e-6 * x, scales=(4.0, 10.0)) == pytest.approx(0.0, abs=1e-7)


def test_canonical_reward_of_a_constant_is_a_constant(transitions):
    const = lambda s, a, s2: np.full(len(s), 5.0)  # noqa: E731
    out = canonicalize(const, *transitions, transitions[0], transitions[1], GAMMA)
    assert np.allclose(out.values, 5.0 + GAMMA * 5.0 - 5.0 - GAMMA * 5.0)
    assert out.scale == 5.0  # the largest term it summed
