"""check_turn under both presets: the layout, the tool call and its result, the answer, and the messages."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vr_thinker.presets import load_preset
from vr_thinker.protocol import (
    ProblemCode,
    TurnState,
    check_turn,
    first_user_message,
    label_verdicts,
    reduce_frames,
    system_message,
    verdict_labels,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vr_thinker"
PRESETS = {"vr-thinker": load_preset("vr-thinker"), "vrthinker": load_preset("vrthinker")}
S = "<synthesis>Video 1 shows a red ball.</synthesis>\n"
T = "<think>Its motion looks smooth.</think>\n"
R = "<recommend answer>TA=1, VQ=1, MQ=0, OA=1, CF=2</recommend answer>\n"
F = "<final answer>TA=1, VQ=1, MQ=0, OA=1</final answer>"


def call(frames: object = (13, 25, 61, 73), name: str = "select_frames", raw: str | None = None) -> str:
    body = raw if raw is not None else json.dumps({"name": name, "arguments": {"target_frames": list(frames)
                                                                                if isinstance(frames, tuple) else frames}})
    return f"<tool_call>\n{body}\n</tool_call>"


def check(text: str, preset_name: str = "vr-thinker", **state):
    return check_turn(text, TurnState(**state), PRESETS[preset_name])


def codes(text: str, preset_name: str = "vr-thinker", **state) -> set[str]:
    return {c.value for c in check(text, preset_name, **state).codes}


# ------------------------------------------------------------------------------------------------ well-formed


@pytest.mark.parametrize("name", PRESETS)
def test_a_well_formed_call_runs_and_shows_the_numbered_frames(name):
    result = check(S + T + R + call([1, 13, 96]), name)
    assert result.format_valid and not result.final and result.end_reason == ""
    assert result.tool_call.kind == "frames" and result.tool_call.frames == [0, 12, 95]
    assert result.recommend == {"TA": 1, "VQ": 1, "MQ": 0, "OA": 1, "CF": 2} and result.answer is None
    assert result.synthesis == "Video 1 shows a red ball." and result.think == "Its motion looks smooth."


@pytest.mark.parametrize("name", PRESETS)
def test_a_well_formed_final_answer_ends_the_episode_with_its_verdicts(name):
    result = check(S + T + F, name)
    assert result.format_valid and result.final and result.end_reason == "answer"
    assert result.answer == {"TA": 1, "VQ": 1, "MQ": 0, "OA": 1} and result.tool_call is None


def test_answer_keys_in_any_order_case_and_separator_and_a_matching_box():
    result = check(S + T + "<final answer>oa = 2; mq=0\nTA=1, VQ=2 \\boxed{2}</final answer>")
    assert result.format_valid and result.answer == {"OA": 2, "MQ": 0, "TA": 1, "VQ": 2}


def test_a_box_alone_is_the_overall_verdict_but_the_dimension_lines_are_missing():
    # Issue 18: an answer holding only a box, with no dimension line.
    result = check(S + T + "<final answer>\\boxed{2}</final answer>")
    assert not result.format_valid and result.final and result.answer == {"OA": 2}
    assert {p.detail for p in result.problems} == {f"<final answer> has no {k}" for k in ("TA", "VQ", "MQ")}


# -------------------------------------------------------------------------------------------------- malformed

# (name, text, problem codes expected, final) - the official tags appear throughout.
MALFORMED = [
    ("empty", "", {"missing_tag", "no_action"}),
    ("free text", "Video 1 is better.", {"missing_tag", "no_action", "text_outside_tags"}),
    ("no synthesis", T + R + call(), {"missing_tag"}),
    ("no think", S + R + call(), {"missing_tag"}),
    ("call without recommend", S + T + call(), {"call_without_recommend"}),
    ("recommend without call", S + T + R, {"recommend_without_call", "no_action"}),
    ("think before synthesis", T + S + R + call(), {"tag_order"}),
    ("call before recommend", S + T + call() + R, {"tag_order"}),
    ("text before the tags", "Sure! " + S + T + R + call(), {"text_outside_tags"}),
    ("text after the call", S + T + R + call() + " done", {"text_outside_tags"}),
    ("box after the final answer", S + T + F + " \\boxed{2}", {"text_outside_tags"}),
    ("upper-case tags", S.replace("synthesis", "Synthesis") + T + R + call(), {"missing_tag", "text_outside_tags"}),
    ("paper's Snapshot tag", "<Snapshot>x</Snapshot>" + T + R + call(), {"missing_tag", "text_outside_tags"}),
    ("call and final answer", S + T + R + F + call(), {"call_and_answer", "tag_order"}),
    ("two calls", S + T + R + call() + call(), {"multiple_tool_calls"}),
    ("two think blocks", S + T + T + R + call(), {"duplicate_tag"}),
    ("two final answers", S + T + F + F, {"duplicate_tag"}),
    ("unclosed think", S + "<think>smooth\n" + R + call(), {"unclosed_tag", "no_action"}),
    ("unclosed final answer", S + T + "<final answer>TA=1, VQ=1", {"unclosed_tag", "missing_key"}),
    ("stray closing tag", S + "</think>" + T + F, {"stray_closing_tag", "text_outside_tags"}),
    ("final answer missing a key", S + T + F.replace("MQ=0, ", ""), {"missing_key"}),
    ("final answer missing OA", S + T + F.replace(", OA=1", ""), {"missing_key"}),
    ("final answer value 3", S + T + F.replace("TA=1", "TA=3"), {"bad_value"}),
    ("final answer value word", S + T + F.replace("TA=1", "TA=one"), {"bad_value"}),
    ("final answer unknown key", S + T + F.replace("OA=1", "OA=1, XX=1"), {"unknown_key"}),
    ("final answer key twice", S + T + F.replace("OA=1", "OA=1, TA=2"), {"duplicate_key"}),
    ("final answer with colons", S + T + F.replace("TA=1", "TA: 1"), {"answer_syntax", "missing_key"}),
    ("final answer with confidence", S + T + F.replace("OA=1", "OA=1, CF=2"), {"unknown_key"}),
    ("two boxes", S + T + F.replace("OA=1", "OA=1 \\boxed{1} \\boxed{1}"), {"multiple_boxes"}),
    ("box disagrees with OA", S + T + F.replace("OA=1", "OA=1 \\boxed{2}"), {"box_disagrees"}),
    ("box value 5", S + T + F.replace("OA=1", "\\boxed{5}"), {"bad_value", "missing_key"}),
    ("recommend without CF", S + T + R.replace(", CF=2", "") + call(), {"missing_key"}),
    ("recommend CF=5", S + T + R.replace("CF=2", "CF=5") + call(), {"bad_confidence"}),
    ("recommend with a box", S + T + R.replace("CF=2", "CF=2 \\boxed{1}") + call(), {"answer_syntax"}),
]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("case, text, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_turns_are_format_errors_that_end_the_episode(name, case, text, expected):
    result = check(text, name)
    assert not result.format_valid and result.final and result.tool_call is None
    assert {c.value for c in result.codes} == expected
    assert result.end_reason == "format"


def test_a_truncated_turn_is_a_format_error_even_if_complete():
    result = check(S + T + F, truncated=True)
    assert [c.value for c in result.codes] == ["truncated"] and result.final and result.answer == {
        "TA": 1, "VQ": 1, "MQ": 0, "OA": 1}


# ------------------------------------------------------------------------------------------------ tool results

TOOL_ERRORS = [
    ("invalid json", call(raw='{"name": "select_frames", "arguments": {"target_frames": [1,}}'), "invalid_json"),
    ("not an object", call(raw="[1, 2]"), "not_an_object"),
    ("unknown tool", call([1], name="crop_image"), "unknown_tool"),
    ("no arguments", call(raw='{"name": "select_frames"}'), "bad_arguments"),
    ("wrong argument name", call(raw='{"name": "select_frames", "arguments": {"frames": [1]}}'), "bad_arguments"),
    ("not a list", call(5), "not_a_list"),
    ("string frame", call(["3"]), "non_int_frame"),
    ("bool frame", call([True]), "non_int_frame"),
    ("float frame", call([2.0]), "non_int_frame"),
    ("empty list", call([]), "empty_frames"),
]


@pytest.mark.parametrize("case, tool, code", TOOL_ERRORS, ids=[t[0] for t in TOOL_ERRORS])
def test_a_broken_call_is_answered_with_its_execution_error(case, tool, code):
    result = check(S + T + R + tool)
    assert result.format_valid and not result.final  # the model gets the error and may try again
    assert result.tool_call.kind == "error" and result.tool_call.problem.code.value == code
    assert result.tool_call.message == f"After selecting frames:\nExecution error:\n{result.tool_call.problem.detail}\n"


@pytest.mark.parametrize("name, numbers", [("vr-thinker", [0]), ("vr-thinker", [-1]), ("vr-thinker", [97]),
                                           ("vrthinker", [257]), ("vrthinker", [0, 5])])
def test_frame_numbers_outside_the_pools_get_the_official_notice(name, numbers):
    result = check(S + T + R + call(numbers), name)
    total = PRESETS[name].total_frames
    assert result.tool_call.kind == "notice" and result.tool_call.frames == []
    assert result.tool_call.message == (f"After selecting frames:\nThere are {total} frames numbered in range "
                                        f"[1,{total}]. Your selection is out of range.")


def test_duplicates_are_shown_as_asked():
    assert check(S + T + R + call([3, 3, 1])).tool_call.frames == [2, 2, 0]


def test_over_the_limit_a_notice_or_a_reduced_list_as_the_official_rule():
    numbers = list(range(11, 21))
    notice = check_turn(S + T + R + call(numbers), TurnState(),
                        load_preset("vr-thinker", ["frames.reduce_probability=0"])).tool_call
    assert notice.kind == "notice" and notice.message == (
        "After selecting frames:\nYou have selected 10 frames in total. Think again which frames you need to check "
        "in details (no more than 8 frames)")
    reduced = check_turn(S + T + R + call(numbers), TurnState(rng=np.random.default_rng(0)),
                         load_preset("vr-thinker", ["frames.reduce_probability=1"])).tool_call
    assert reduced.kind == "frames" and reduced.reduced
    # Shown as numbered (0-based index = number - 1), unlike the official code, which shows each one late.
    assert all(i + 1 in numbers for i in reduced.frames) and len(reduced.frames) in (5, 10 // 2)
    # vrthinker allows 12 per call.
    assert check(S + T + R + call(list(range(1, 13))), "vrthinker").tool_call.kind == "frames"


def test_the_reduction_strategies_and_their_shares():
    numbers = list(range(1, 12))  # 11: halves of 5 (first) and 6 (last, as numbers[-n // 2:])
    rng = np.random.default_rng(1)
    seen = {}
    for _ in range(4000):
        out = tuple(reduce_frames(numbers, rng))
        key = ("first" if out == tuple(numbers[:5]) else "last" if out == tuple(numbers[-6:])
               else "stride" if out == tuple(numbers[::2]) else "random")
        seen[key] = seen.get(key, 0) + 1
        if key == "random":
            assert len(out) == 5 and list(out) == sorted(out) and set(out) <= set(numbers)
    assert set(seen) == {"first", "last", "stride", "random"}
    assert all(abs(count / 4000 - 0.25) < 0.03 for count in seen.values())


# ------------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", PRESETS)
def test_a_call_after_the_last_allowed_one_does_not_run(name):
    limits = PRESETS[name].limits
    last = check(S + T + R + call([1]), name, calls_made=limits.max_tool_calls - 1, turn_index=limits.max_tool_calls - 1)
    assert not last.final
    over = check(S + T + R + call([1]), name, calls_made=limits.max_tool_calls, turn_index=limits.max_tool_calls)
    assert over.final and over.end_reason == "call_budget" and over.tool_call is None and over.format_valid


def test_the_turn_limit_and_the_context_cap_end_a_call():
    preset = load_preset("vr-thinker", ["limits.max_tool_calls=5"])
    limit = check_turn(S + T + R + call([1]), TurnState(calls_made=3, turn_index=3), preset)
    assert limit.final and limit.end_reason == "turn_limit"
    cap = check(S + T + R + call([1]), context_tokens=12000, output_tokens=89)
    assert cap.final and cap.end_reason == "context"
    assert not check(S + T + R + call([1]), context_tokens=12000, output_tokens=88).final


# ------------------------------------------------------------------------------------------------- messages


def _render(preset_name: str) -> str:
    """The first context as the chat template renders it (ChatML; the tiny models' template renders these
    messages exactly as the stock Qwen2.5-VL one: system, user with media then text)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from mmreward.backbones.chat_template import TOOL_CHAT_TEMPLATE

    preset = PRESETS[preset_name]
    dims = preset.dimensions()
    frames = [Image.new("RGB", (28, 28))] * preset.frames.initial_count
    messages = [system_message(preset, dims), first_user_message(preset, "a red ball bouncing", dims, frames)]
    rendered, _ = render_jinja_template([messages], chat_template=TOOL_CHAT_TEMPLATE, add_generation_prompt=True)
    return rendered[0]


@pytest.mark.parametrize("name", PRESETS)
def test_the_first_prompt_is_the_fixture_text(name):
    assert _render(name) == (FIXTURES / f"{name}_first_prompt.txt").read_text(encoding="utf-8")


def test_the_default_frames_per_call_and_pool_size_are_in_the_prompt():
    # Issue 18: the default frames-per-call in the prompt.
    preset = PRESETS["vr-thinker"]
    system = preset.system_text(preset.dimensions())
    assert "(no more than 8 frames in total)" in system and '"Frame index from 1 to 96."' in system
    small = load_preset("vr-thinker", ["frames.max_per_call=4", "frames.per_video=8"])
    system = small.system_text(small.dimensions())
    assert "(no more than 4 frames in total)" in system and '"Frame index from 1 to 16."' in system
    assert "up to 12 more frames per call" in PRESETS["vrthinker"].system_text(PRESETS["vrthinker"].dimensions())


def test_first_turn_media_video_or_images():
    frames = [Image.new("RGB", (4, 4))] * 8
    message = first_user_message(PRESETS["vr-thinker"], "x", PRESETS["vr-thinker"].dimensions(), frames)
    assert [p["type"] for p in message["content"]] == ["video", "text"] and len(message["content"][0]["video"]) == 8
    message = first_user_message(PRESETS["vrthinker"], "x", PRESETS["vrthinker"].dimensions(), frames)
    assert [p["type"] for p in message["content"]] == ["image"] * 8 + ["text"]


def test_labels_and_verdicts_map_per_dimension_set():
    preset = PRESETS["vr-thinker"]
    label = {"TA": "a", "VQ": "tie", "MQ": "b", "overall": "b"}
    verdicts = label_verdicts(label, preset)
    assert verdicts == {"TA": 1, "VQ": 0, "MQ": 2, "OA": 2}
    assert verdict_labels(verdicts, preset) == label
    mj = preset.dimensions("mjbench_video")
    mj_label = {"Alignment": "a", "Fineness": "b", "Coherence & Consistency": "tie", "overall": "a"}
    assert label_verdicts(mj_label, preset, mj) == {"TA": 1, "VQ": 2, "MQ": 0, "OA": 1}
    assert label_verdicts({"overall": "b"}, preset) == {"OA": 2}  # GenAI-Bench: overall only
    with pytest.raises(ValueError, match="'VQ' has value 'c'"):
        label_verdicts({"VQ": "c", "overall": "a"}, preset)
    with pytest.raises(ValueError, match="no 'overall'"):
        label_verdicts({"VQ": "a"}, preset)


def test_problem_codes_are_all_reachable_from_the_cases():
    reached = {code for _, text, expected in MALFORMED for code in expected} | {t[2] for t in TOOL_ERRORS}
    reached |= {"truncated", "out_of_range", "over_limit"}
    assert reached == {c.value for c in ProblemCode}
