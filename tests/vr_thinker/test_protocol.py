import json

import numpy as np
import pytest
from PIL import Image

from vr_thinker.protocol import (
    SELECT_FRAMES_TOOL,
    SYSTEM_PROMPT,
    Frame,
    ProblemCode,
    answer_template,
    build_feedback_message,
    build_first_user_message,
    build_frames_message,
    normalize_dimensions,
    parse_assistant_turn,
    select_frames_tool,
    verdicts_from_label,
)

DIMS = ["VQ", "MQ", "TA"]
ANSWER = "VQ: \\boxed{1}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}"


def call(args: object, name: str = "select_frames") -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def codes(text: str, truncated: bool = False) -> list[str]:
    return [c.value for c in parse_assistant_turn(text, DIMS, truncated=truncated).codes]


def test_tool_schema_is_openai_function_format():
    fn = SELECT_FRAMES_TOOL["function"]
    assert SELECT_FRAMES_TOOL["type"] == "function" and fn["name"] == "select_frames"
    assert fn["parameters"]["required"] == ["target_frames"]
    assert fn["parameters"]["properties"]["target_frames"] == {
        "type": "array",
        "items": {"type": "integer"},
        "description": "Frame pool indices (0-based) to view in both videos.",
    }
    assert "At most 5 indices" in select_frames_tool(5)["function"]["description"]


def test_system_prompt_states_the_protocol():
    for needle in ("<think>", "<synthesis>", "<tool_call>", "select_frames", "\\boxed{V}", "at most 3 calls"):
        assert needle in SYSTEM_PROMPT


def test_answer_template_lists_every_dimension_then_overall():
    assert answer_template(DIMS) == (
        "VQ: \\boxed{1|2|0}\nMQ: \\boxed{1|2|0}\nTA: \\boxed{1|2|0}\nOverall: \\boxed{1|2|0}"
    )


def test_first_user_message_labels_each_frame():
    img = Image.new("RGB", (4, 4))
    frames = [Frame(1, 0, img, 0.0), Frame(1, 9, img, 1.5), Frame(2, 0, img, 0.0), Frame(2, 9, img, None)]
    msg = build_first_user_message("a cat", {"VQ": "visual quality"}, frames, (10, 12))
    assert msg["role"] == "user"
    images = [p for p in msg["content"] if p["type"] == "image"]
    assert len(images) == 4 and all(p["image"] is img for p in images)
    labels = [p["text"] for p in msg["content"] if p["type"] == "text"]
    assert labels[1:5] == [
        "Video 1, frame 0 (0.00 s):\n",
        "Video 1, frame 9 (1.50 s):\n",
        "Video 2, frame 0 (0.00 s):\n",
        "Video 2, frame 9:\n",
    ]
    assert '"a cat"' in labels[0] and "- VQ: visual quality" in labels[0]
    assert "Video 1 has frames 0-9, Video 2 has frames 0-11" in labels[0]
    assert labels[-1].endswith("VQ: \\boxed{1|2|0}\nOverall: \\boxed{1|2|0}")


def test_frames_and_feedback_messages_use_tool_role():
    img = Image.new("RGB", (4, 4))
    msg = build_frames_message([Frame(1, 3, img), Frame(2, 3, img)], ["1 tool call left."])
    assert msg["role"] == "tool"
    assert [p["type"] for p in msg["content"]] == ["text", "text", "image", "text", "image", "text"]
    assert msg["content"][0]["text"] == "Frames [3]:\n"
    fb = parse_assistant_turn("no tags", DIMS).problems
    assert build_feedback_message(fb, as_tool=False)["role"] == "user"
    assert "no_think" in build_feedback_message(fb, as_tool=True)["content"][0]["text"]


def test_valid_tool_call_with_synthesis():
    turn = parse_assistant_turn("<think>need motion</think>\n<synthesis>blurry</synthesis>\n" + call(
        {"target_frames": [3, 0, 3]}), DIMS)
    assert turn.ok and turn.kind == "tool_call" and turn.attempted == "tool_call"
    assert (turn.think, turn.synthesis, turn.tool_name) == ("need motion", "blurry", "select_frames")
    assert turn.target_frames == [3, 0, 3] and turn.tool_args == {"target_frames": [3, 0, 3]}


def test_valid_answer_any_order_case_insensitive_and_boxes_in_think_ignored():
    text = "<think>maybe \\boxed{2}?</think>\nOverall: \\boxed{1}\nta: \\boxed{0}\nVQ:\\boxed{ 1 }\nMQ: \\boxed{2}\n"
    turn = parse_assistant_turn(text, DIMS)
    assert turn.ok and turn.kind == "answer"
    assert turn.verdicts == {"overall": 1, "TA": 0, "VQ": 1, "MQ": 2}


def test_answer_with_no_dimensions_needs_only_overall():
    turn = parse_assistant_turn("<think>x</think>Overall: \\boxed{2}", [])
    assert turn.ok and turn.verdicts == {"overall": 2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (call({"target_frames": [1]}), ["no_think"]),
        ("hi <think>x</think>" + call({"target_frames": [1]}), ["text_before_think"]),
        ("<think>a</think><think>b</think>" + call({"target_frames": [1]}), ["multiple_think"]),
        ("<think>a</think>" + call({"target_frames": [1]}) + "<synthesis>s</synthesis>", ["misplaced_synthesis"]),
        ("<think>a</think></think>" + call({"target_frames": [1]}), ["unbalanced_tag"]),
        ("<think>a</think>", ["no_action"]),
        ("<think>a</think>" + call({"target_frames": [1]}) + " thanks", ["unexpected_text"]),
        ("<think>a</think>" + call({"target_frames": [1]}) * 2, ["multiple_tool_calls"]),
        ("<think>a</think>" + call({"target_frames": [1]}) + "\n" + ANSWER, ["tool_call_and_answer"]),
        ("<think>a</think><tool_call>select_frames 1 2</tool_call>", ["no_json"]),
        ("<think>a</think><tool_call>{\"name\": \"select_frames\", </tool_call>", ["invalid_json"]),
        ("<think>a</think><tool_call>[1, 2]</tool_call>", ["invalid_json"]),
        ("<think>a</think>" + call({"target_frames": [1]}, name="zoom"), ["unknown_tool"]),
        ("<think>a</think>" + call("[1, 2]"), ["invalid_arguments"]),
        ("<think>a</think>" + call({"frames": [1]}), ["wrong_key"]),
        ("<think>a</think>" + call({"target_frames": [1], "video": 2}), ["wrong_key"]),
        ("<think>a</think>" + call({"target_frames": 3}), ["not_a_list"]),
        ("<think>a</think>" + call({"target_frames": ["1", "2"]}), ["non_int_index"]),
        ("<think>a</think>" + call({"target_frames": [1.0]}), ["non_int_index"]),
        ("<think>a</think>" + call({"target_frames": [True]}), ["non_int_index"]),
        ("<think>a</think>" + call({"target_frames": []}), ["empty_frames"]),
        ("<think>a</think>\nVQ: \\boxed{1} \\boxed{2}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}",
         ["multiple_boxes"]),
        ("<think>a</think>\nVQ: \\boxed{1}.\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}", ["unexpected_text"]),
        ("<think>a</think>\n" + ANSWER + "\nVQ: \\boxed{2}", ["duplicate_verdict"]),
        ("<think>a</think>\n" + ANSWER + "\nAQ: \\boxed{2}", ["unknown_dimension"]),
        ("<think>a</think>\nVQ: \\boxed{3}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}", ["unknown_box_value"]),
        ("<think>a</think>\nVQ: \\boxed{}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}", ["unknown_box_value"]),
        ("<think>a</think>\nVQ: 1\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}", ["missing_box"]),
        ("<think>a</think>\nVQ: \\boxed{1}\nMQ: \\boxed{2}\nOverall: \\boxed{1}", ["missing_verdict"]),
        ("<think>a", ["truncated"]),
        ("<think>a</think><synthesis>half", ["truncated"]),
        ("<think>a</think><tool_call>{\"name\": \"select_fr", ["truncated"]),
    ],
)
def test_each_problem_is_named(text, expected):
    assert codes(text) == expected
    assert parse_assistant_turn(text, DIMS).kind == "invalid"


def test_free_text_is_not_an_answer_but_unboxed_verdict_lines_are():
    turn = parse_assistant_turn("<think>a</think>Video 1 is better.", DIMS)
    assert (turn.attempted, turn.codes) == ("none", [ProblemCode.NO_ACTION])
    turn = parse_assistant_turn("<think>a</think>\nVQ: 1\nMQ: 2\nTA: 0\nOverall: 1", DIMS)
    assert turn.attempted == "answer" and turn.verdicts == {}
    assert turn.codes == [ProblemCode.MISSING_BOX] * 5


def test_partial_answer_keeps_readable_verdicts():
    turn = parse_assistant_turn("<think>a</think>\nVQ: \\boxed{x}\nMQ: \\boxed{2}\nOverall: \\boxed{1}", DIMS)
    assert turn.attempted == "answer" and turn.verdicts == {"MQ": 2, "overall": 1}
    assert turn.codes == [ProblemCode.UNKNOWN_BOX_VALUE, ProblemCode.MISSING_VERDICT]


def test_truncated_flag_invalidates_a_complete_looking_turn():
    text = "<think>a</think>\n" + ANSWER
    assert codes(text) == []
    assert codes(text, truncated=True) == ["truncated"]
    assert parse_assistant_turn(text, DIMS, truncated=True).verdicts["overall"] == 1


def test_parser_never_raises_on_garbage():
    rng = np.random.default_rng(0)
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<synthesis>", "</synthesis>", "{", "}", "[",
              "\"target_frames\"", ":", "\\boxed{", "1", "VQ:", "Overall:", "\n", "x", "\"name\"", "null", "\u00e9"]
    for _ in range(300):
        text = "".join(rng.choice(pieces, size=rng.integers(0, 20)))
        turn = parse_assistant_turn(text, DIMS)
        assert turn.kind in ("tool_call", "answer", "invalid")
        assert (turn.kind == "invalid") == bool(turn.problems)


def test_normalize_dimensions_rejects_bad_names():
    assert normalize_dimensions(["VQ", "custom"]) == {"VQ": normalize_dimensions(["VQ"])["VQ"], "custom": ""}
    for bad in (["overall"], ["VQ", "vq"], ["two words"], [""]):
        with pytest.raises(ValueError):
            normalize_dimensions(bad)


def test_verdicts_from_label():
    assert verdicts_from_label({"overall": "a", "VQ": "b", "MQ": "tie"}) == {"overall": 1, "VQ": 2, "MQ": 0}
    with pytest.raises(ValueError, match="'VQ'"):
        verdicts_from_label({"VQ": "A"})
