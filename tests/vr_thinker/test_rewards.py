import pytest

from vr_thinker.rewards import (
    RewardBreakdown,
    RewardConfig,
    TraceOutcome,
    accuracy_reward,
    exploration_rewards,
    format_reward,
    group_rewards,
    keep_for_rejection_sampling,
)

LABEL = {"overall": 1, "VQ": 2, "MQ": 0, "TA": 1}
EXACT = dict(abs=1e-12)


def test_accuracy_all_right_all_wrong():
    assert accuracy_reward(LABEL, LABEL) == 1.0
    assert accuracy_reward({"overall": 2, "VQ": 1, "MQ": 1, "TA": 0}, LABEL) == 0.0


def test_accuracy_missing_verdict_counts_wrong():
    # overall right, 2 of 3 dimensions right (TA missing): 0.5 * 1 + 0.5 * 2/3
    verdicts = {"overall": 1, "VQ": 2, "MQ": 0}
    assert accuracy_reward(verdicts, LABEL) == pytest.approx(5 / 6, **EXACT)
    assert accuracy_reward(verdicts, LABEL, overall_weight=0.2) == pytest.approx(0.2 + 0.8 * 2 / 3, **EXACT)
    assert accuracy_reward({}, LABEL) == 0.0


def test_accuracy_overall_wrong_dimensions_right():
    assert accuracy_reward({"overall": 0, "VQ": 2, "MQ": 0, "TA": 1}, LABEL) == 0.5
    assert accuracy_reward({"overall": 0, "VQ": 2, "MQ": 0, "TA": 1}, LABEL, overall_weight=1.0) == 0.0


def test_accuracy_overall_only_label():
    assert accuracy_reward({"overall": 2}, {"overall": 2}) == 1.0
    with pytest.raises(ValueError, match="overall"):
        accuracy_reward({"VQ": 1}, {"VQ": 1})


def test_format_reward():
    assert format_reward([True, True, True]) == 1.0
    assert format_reward([True, False, True]) == 0.0
    assert format_reward([]) == 0.0


def test_exploration_bonus_when_group_rarely_uses_tool():
    # u = 1/10 -> bonus a * (H - u) = 0.5 * 0.2 = 0.1, only for the trace that called the tool
    calls = [0] * 9 + [2]
    rewards = exploration_rewards(calls)
    assert rewards[:9] == [0.0] * 9
    assert rewards[9] == pytest.approx(0.1, **EXACT)


def test_exploration_no_bonus_above_target_and_penalty_beyond_n():
    # u = 2/5 = 0.4 >= H = 0.3: no bonus; 5 calls -> -0.05 * (5 - 3)
    assert exploration_rewards([0, 0, 0, 1, 5]) == pytest.approx([0.0, 0.0, 0.0, 0.0, -0.1], **EXACT)
    # u = 0.25: bonus 0.5 * 0.05 = 0.025 and the 4-call trace also pays 0.05
    assert exploration_rewards([0, 0, 0, 4]) == pytest.approx([0.0, 0.0, 0.0, 0.025 - 0.05], **EXACT)
    cfg = RewardConfig(curiosity_coef=1.0, curiosity_target=0.5, call_penalty=0.1, max_free_calls=1)
    # u = 0.5 -> bonus 0; calls beyond 1 cost 0.1 each
    assert exploration_rewards([0, 3], cfg) == pytest.approx([0.0, -0.2], **EXACT)
    assert exploration_rewards([]) == []


def test_group_rewards_total():
    outcomes = [
        TraceOutcome({"overall": 1, "VQ": 2, "MQ": 0, "TA": 1}, [True, True], 1),  # all right, valid, 1 call
        TraceOutcome({"overall": 1, "VQ": 2, "MQ": 0}, [False, True], 0),  # TA missing, one invalid turn
        TraceOutcome({}, [True, True, True, True], 4),  # no answer, 4 calls
        TraceOutcome({"overall": 2, "VQ": 2, "MQ": 0, "TA": 1}, [True], 0),
    ]
    # u = 2/4 = 0.5 >= 0.3: no curiosity bonus; trace 3 pays 0.05 * 1
    out = group_rewards(outcomes, LABEL)
    expected = [
        RewardBreakdown(1.0, 1.0, 0.0, 1.5),
        RewardBreakdown(5 / 6, 0.0, 0.0, 5 / 6),
        RewardBreakdown(0.0, 1.0, -0.05, 0.45),
        RewardBreakdown(0.5, 1.0, 0.0, 1.0),
    ]
    for got, want in zip(out, expected, strict=True):
        assert (got.accuracy, got.format, got.exploration, got.total) == pytest.approx(
            (want.accuracy, want.format, want.exploration, want.total), **EXACT
        )


def test_group_rewards_custom_weights_and_per_trace_labels():
    cfg = RewardConfig(overall_weight=1.0, format_coef=2.0, curiosity_coef=1.0, curiosity_target=1.0)
    outcomes = [TraceOutcome({"overall": 1}, [True], 1), TraceOutcome({"overall": 1}, [False], 0)]
    out = group_rewards(outcomes, [{"overall": 1, "VQ": 1}, {"overall": 2, "VQ": 1}], cfg)
    # u = 0.5 -> bonus 1.0 * (1.0 - 0.5) for the caller
    assert [r.total for r in out] == pytest.approx([1.0 + 2.0 + 0.5, 0.0], **EXACT)
    with pytest.raises(ValueError, match="2 outcomes but 1 labels"):
        group_rewards(outcomes, [{"overall": 1}], cfg)


def test_rejection_keep_rule():
    right = {"overall": 1, "VQ": 2, "MQ": 0, "TA": 1}
    assert keep_for_rejection_sampling(TraceOutcome(right, [True, True], 1), LABEL)
    assert not keep_for_rejection_sampling(TraceOutcome(right, [False, True], 1), LABEL)
    assert not keep_for_rejection_sampling(TraceOutcome({**right, "MQ": 1}, [True], 0), LABEL)
    assert not keep_for_rejection_sampling(TraceOutcome({"overall": 1, "VQ": 2, "MQ": 0}, [True], 0), LABEL)


def test_config_validation():
    with pytest.raises(ValueError):
        RewardConfig(overall_weight=1.5)
    with pytest.raises(ValueError):
        RewardConfig(max_free_calls=-1)
