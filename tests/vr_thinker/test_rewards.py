"""trace_reward: exact values of every term, official and paper variants, and the rejection-sampling rule."""

import pytest

from vr_thinker.presets import load_preset
from vr_thinker.rewards import TraceOutcome, accuracy, group_rewards, keep_for_rejection_sampling, trace_reward

PRESET = load_preset("vr-thinker")
LABEL = {"TA": 1, "VQ": 2, "MQ": 0, "OA": 1}
RIGHT = dict(LABEL)
WRONG = {"TA": 1, "VQ": 2, "MQ": 0, "OA": 2}


def outcome(calls: int, right: bool = True, valid: bool = True, error: bool = False, recommends=()) -> TraceOutcome:
    turns = [True] * calls + [valid]
    return TraceOutcome(verdicts=RIGHT if right else WRONG, turn_valid=turns, num_tool_calls=calls,
                        recommends=list(recommends), ended_after_tool_error=error, answered=True)


def test_official_terms_exact_values():
    # Group of 8 with calls [0, 1, 2, 3, 1, 0, 2, 4]: rapr = share with > 1 call = 4/8 = 0.5 < 0.6.
    group = [outcome(0), outcome(1), outcome(2), outcome(3), outcome(1, right=False), outcome(0, right=False),
             outcome(2, valid=False), outcome(4)]
    terms = [trace_reward(o, LABEL, PRESET, group=group, step=0) for o in group]
    assert [t.accuracy for t in terms] == [1, 1, 1, 1, 0, 0, 1, 1]
    assert [t.curiosity for t in terms] == pytest.approx([0, -0.1, -0.1, -0.1, -0.1, 0, -0.1, -0.1])
    assert [t.calls for t in terms] == pytest.approx([0, -1.0, 0.5, 1.0, -1.0, 0, 0.5, 1.5])
    assert [t.format for t in terms] == [1, 1, 1, 1, 1, 1, 0, 1]
    # n = 0: accuracy only; n >= 1: accuracy + curiosity + calls + format.
    assert [t.total for t in terms] == pytest.approx([1.0, 0.9, 2.4, 2.9, -0.1, 0.0, 1.4, 3.4])
    assert terms[1].extra == {"rapr": 0.5, "scale": 1.0}


def test_the_scale_schedule_of_the_curiosity_and_call_terms():
    group = [outcome(1), outcome(3), outcome(0), outcome(0)]  # rapr = 1/4
    by_step = {step: trace_reward(group[1], LABEL, PRESET, group=group, step=step) for step in (None, 29, 30, 49, 50)}
    assert by_step[None].calls == by_step[29].calls == 1.0 and by_step[29].curiosity == pytest.approx(-0.35)
    assert by_step[30].calls == pytest.approx(0.2) and by_step[49].curiosity == pytest.approx(-0.07)
    assert by_step[50].calls == pytest.approx(0.1) and by_step[50].curiosity == pytest.approx(-0.035)
    assert by_step[50].total == pytest.approx(1 + 0.1 - 0.035 + 1)  # the format flag is not scaled
    official_code = load_preset("vr-thinker", ["reward.official.scale_schedule=[[30, 0.2]]"])
    assert trace_reward(group[1], LABEL, official_code, group=group, step=80).calls == pytest.approx(0.2)


def test_no_curiosity_once_enough_traces_call_twice():
    group = [outcome(2)] * 5 + [outcome(1)] * 3  # rapr = 5/8 >= 0.6
    assert trace_reward(group[0], LABEL, PRESET, group=group).curiosity == 0.0


def test_a_final_answer_right_after_a_tool_error_scores_no_accuracy():
    terms = trace_reward(outcome(1, error=True), LABEL, PRESET)
    assert terms.accuracy == 0.0 and terms.total == pytest.approx(0 + (0 - 0.6) - 1.0 + 1)


def test_image_constants():
    group = [outcome(1), outcome(4), outcome(0), outcome(0)]  # rapr = 1/4 < 0.5
    one = trace_reward(group[0], LABEL, PRESET, group=group, step=80, modality="image")
    many = trace_reward(group[1], LABEL, PRESET, group=group, step=80, modality="image")
    assert one.curiosity == pytest.approx((0.25 - 0.5) * 0.15) and one.calls == 0.0
    assert many.calls == pytest.approx(0.1) and many.total == pytest.approx(1 + (0.25 - 0.5) * 0.15 + 0.1)
    with pytest.raises(ValueError, match="modality"):
        trace_reward(group[0], LABEL, PRESET, modality="audio")


def test_paper_terms_exact_values():
    recommends = [{"TA": 1, "VQ": 1, "MQ": 1, "OA": 2, "CF": 3}, None]  # acc 0.5 * 0 + 0.5 * 1/3 = 1/6
    called = outcome(1, recommends=recommends)
    group = [called] + [outcome(0)] * 9  # share with a call: 0.1 < omega 0.2
    terms = trace_reward(called, LABEL, PRESET, group=group, variant="paper")
    assert terms.accuracy == 1.0 and terms.format == 1.0
    assert terms.cot_gain == pytest.approx(0.2 * (1.0 - 1 / 6))
    assert terms.exploration == pytest.approx(0.1)
    assert terms.total == pytest.approx(1 + 1 + 0.2 * (5 / 6) + 0.5 * 0.1)
    plain = trace_reward(group[1], LABEL, PRESET, group=group, variant="paper")
    assert plain.exploration == 0.0 and plain.cot_gain == 0.0 and plain.total == 2.0
    half = {"TA": 1, "VQ": 0, "MQ": 0, "OA": 2}  # overall wrong, 2 of 3 dimensions right
    assert accuracy(half, LABEL, PRESET, 0.5) == pytest.approx(1 / 3)
    assert accuracy(half, LABEL, PRESET) == 0.0  # official: the overall verdict only
    assert load_preset("vr-thinker", ["reward.variant=paper"]).reward.variant == "paper"


def test_labels_may_be_record_labels_and_traces_may_be_environments():
    record_label = {"TA": "a", "VQ": "b", "MQ": "tie", "overall": "a"}
    assert trace_reward(outcome(0), record_label, PRESET).total == 1.0
    with pytest.raises(TypeError, match="TraceOutcome"):
        trace_reward("not a trace", LABEL, PRESET)
    with pytest.raises(ValueError, match="'OA'"):
        trace_reward(outcome(0), {"TA": 1}, PRESET)


def test_group_rewards_share_the_group():
    group = [outcome(2), outcome(0), outcome(0), outcome(0)]  # rapr = 1/4
    totals = [t.total for t in group_rewards(group, LABEL, PRESET)]
    assert totals == pytest.approx([1 + (0.25 - 0.6) + 0.5 + 1, 1, 1, 1])


def test_rejection_keeps_only_clean_fully_right_traces():
    assert keep_for_rejection_sampling(outcome(1), LABEL, PRESET)
    assert not keep_for_rejection_sampling(outcome(1, right=False), LABEL, PRESET)
    assert not keep_for_rejection_sampling(outcome(1, valid=False), LABEL, PRESET)
    wrong_dim = TraceOutcome({"TA": 2, "VQ": 2, "MQ": 0, "OA": 1}, [True], 0, answered=True)
    assert not keep_for_rejection_sampling(wrong_dim, LABEL, PRESET)
    unanswered = TraceOutcome(RIGHT, [True], 0, answered=False)
    assert not keep_for_rejection_sampling(unanswered, LABEL, PRESET)
