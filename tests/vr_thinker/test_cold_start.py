"""Cold-start traces: teacher traces are clean env episodes that follow the ground truth; imports are validated."""

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from mmreward.data.records import PreferenceRecord, Side, read_records
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from vr_thinker.cold_start import (
    EpisodeTrace,
    TeacherConfig,
    TraceError,
    read_traces,
    replay,
    teacher_trace,
    teacher_traces,
    trace_from_env,
    write_traces,
)
from vr_thinker.env import EpisodeStatus
from vr_thinker.presets import load_preset
from vr_thinker.protocol import TurnState, check_turn, label_verdicts
from vr_thinker.trace_html import render_trace_html

OVERRIDES = ["frames.per_video=8", "frames.max_per_call=4"]
ENV = load_preset("vr-thinker", OVERRIDES)  # the protocol of the traces: pools of 8 (frames 1-16), 4 per call


def verdicts_from_label(label):
    return label_verdicts(label, ENV)


def parse(text):
    return check_turn(text, TurnState(), ENV)
SMALL = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(40, 0, 0), num_frames=8,
                        video_size=48)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[PreferenceRecord]:
    paths = generate_synthetic(tmp_path_factory.mktemp("syn"), seed=0, config=SMALL)
    return list(read_records(paths["videos/train"]))


def first(records, predicate) -> PreferenceRecord:
    return next(r for r in records if predicate(r))


def is_mq_fault(record, fault: str) -> bool:
    return record.meta["varies"] == ["MQ"] and fault in (record.meta["a"]["motion"], record.meta["b"]["motion"])


# ------------------------------------------------------------------------------------------------------ teacher


@pytest.mark.parametrize("style", ["full", "brief"])
def test_every_teacher_trace_is_a_clean_episode_with_the_labelled_verdicts(records, style):
    calls = Counter()
    for record in records:
        trace, env = teacher_trace(record, ENV, TeacherConfig(style=style))
        assert env.status == EpisodeStatus.ANSWERED
        assert env.verdicts == verdicts_from_label(record.label)
        assert all(turn.valid for turn in env.turns)
        assert all(parse(t).format_valid for t in trace.turns)
        assert all(parse(t).recommend is not None for t in trace.turns[:-1])
        assert len(trace.turns) == trace.num_tool_calls + 1 and 0 <= trace.num_tool_calls <= 3
        assert replay(trace, require_correct=True).verdicts == env.verdicts
        calls[trace.num_tool_calls] += 1
    assert set(calls) == {0, 1, 2, 3}  # the seeded choice covers every budget on 40 pairs


def test_motion_calls_look_at_consecutive_frames(records):
    for fault in ("jitter", "frozen"):
        record = first(records, lambda r: is_mq_fault(r, fault))
        trace, _ = teacher_trace(record, ENV, TeacherConfig(skip_evident_share=0.0, motion_frames=3))
        assert trace.frames, fault
        for frames in trace.frames:
            # at most max_per_call / 2 = 2 consecutive frames of Video 1, then the same moments of Video 2
            start = frames[0]
            assert frames == [start, start + 1, start + 8, start + 9]
        # The first look is the middle of the 8-frame pools (start 3..5 as numbers for runs of 2).
        assert trace.frames[0][0] in (3, 4, 5)


def test_frozen_clip_can_be_judged_from_the_initial_frames(records):
    record = first(records, lambda r: is_mq_fault(r, "frozen"))
    cfg = TeacherConfig(style="brief", skip_evident_share=1.0)
    trace, _ = teacher_trace(record, ENV, cfg)
    v = verdicts_from_label(record.label)
    assert trace.turns == [
        "<synthesis>Seen.</synthesis>\n<think>Answer.</think>\n"
        f"<final answer>TA={v['TA']}, VQ={v['VQ']}, MQ={v['MQ']}, OA={v['OA']}</final answer>"
    ]
    # A jittery clip is never answered blind: the spread-out initial frames cannot show it.
    jitter = first(records, lambda r: is_mq_fault(r, "jitter"))
    assert teacher_trace(jitter, ENV, cfg)[0].num_tool_calls >= 1


def test_full_style_states_what_each_video_shows(records):
    record = first(records, lambda r: r.meta["varies"] == ["TA"])
    trace, _ = teacher_trace(record, ENV, TeacherConfig(skip_evident_share=0.0, second_look_share=0.0))
    good = 1 if record.label["TA"] == "a" else 2
    first_turn = parse(trace.turns[0])
    opening = first_turn.think
    assert f"The prompt asks for {record.prompt}." in opening
    assert f"Video {good} matches the prompt and Video {3 - good} does not." in opening
    for side, video in (("a", 1), ("b", 2)):
        meta = record.meta[side]
        assert f"Video {video} shows " in first_turn.synthesis and meta["color"] in first_turn.synthesis
    final = parse(trace.turns[-1])
    assert f"Text alignment: Video {good} is better." in final.think
    assert f"Overall Video {good} wins on text alignment." in final.think
    assert "motion" in final.synthesis  # notes that survive the memory window


def test_a_finished_episode_is_recorded_as_its_trace(records):
    trace, env = teacher_trace(records[0], ENV)
    again = trace_from_env(env, trace.id, trace.video_1, trace.video_2, trace.label, trace.source)
    assert again == trace
    running = trace.make_env()
    running.reset()
    with pytest.raises(ValueError, match="not finished"):
        trace_from_env(running, "x", trace.video_1, trace.video_2)


def test_teacher_is_deterministic_per_seed(records):
    a = teacher_traces(records, ENV, TeacherConfig(seed=0))
    b = teacher_traces(records, ENV, TeacherConfig(seed=0))
    c = teacher_traces(records, ENV, TeacherConfig(seed=1))
    assert [t.turns for t in a] == [t.turns for t in b]
    assert [t.frames for t in a] != [t.frames for t in c]


def test_teacher_needs_synthetic_video_records(records):
    no_meta = replace(records[0], meta={})
    with pytest.raises(ValueError, match=f"record '{records[0].id}'.*meta"):
        teacher_trace(no_meta, ENV)
    image = replace(records[0], a=Side(image=Path("x.png")))
    with pytest.raises(ValueError, match="video on both sides"):
        teacher_trace(image, ENV)
    with pytest.raises(ValueError, match="style"):
        TeacherConfig(style="long")


def test_trace_renders_to_html_with_the_frames_looked_at(records):
    record = first(records, lambda r: is_mq_fault(r, "jitter"))
    trace, env = teacher_trace(record, ENV, TeacherConfig(skip_evident_share=0.0, second_look_share=0.0))
    page = render_trace_html(env, title=record.id, label=record.label)
    assert page.count("<img ") == 8 + len(trace.frames[0])  # initial frames + the tool call's frames
    assert "In frames" in page and page.count('class="right"') == 4 and 'class="wrong"' not in page
    assert f"{trace.frames[0][-1]} (Video 2)" in page and "vr-thinker" in page


# ------------------------------------------------------------------------------------------------ JSONL import


def test_write_read_round_trip(records, tmp_path):
    traces = teacher_traces(records[:6], ENV)
    path = write_traces(tmp_path / "out" / "traces.jsonl", traces)
    back = read_traces(path)
    assert len(back) == 6 and back.skipped == []
    for x, y in zip(traces, back):
        assert (x.id, x.turns, x.frames, x.label, x.preset, x.dimensions, x.seed) == (
            y.id, y.turns, y.frames, y.label, y.preset, y.dimensions, y.seed)
        assert y.video_1.resolve() == x.video_1.resolve()


def raw_trace(record, **changes) -> dict:
    trace, _ = teacher_trace(record, ENV, TeacherConfig(style="brief", skip_evident_share=0.0, second_look_share=0.0))
    line = {
        "id": record.id,
        "prompt": record.prompt,
        "video_1": str(record.a.video),
        "video_2": str(record.b.video),
        "label": record.label,
        "preset": "vr-thinker",
        "preset_overrides": OVERRIDES,
        "seed": trace.seed,
        "conversation": [
            {"role": "assistant", "content": trace.turns[0]},
            {"role": "tool", "frames": trace.frames[0]},
            {"role": "assistant", "content": trace.turns[1]},
        ],
    }
    line.update(changes)
    return line


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_import_accepts_openai_style_tool_calls(records, tmp_path):
    line = raw_trace(records[0])
    call = json.loads(line["conversation"][0]["content"].split("<tool_call>")[1].split("</tool_call>")[0])
    head = line["conversation"][0]["content"].split("<tool_call>")[0].rstrip()
    line["conversation"][0] = {
        "role": "assistant",
        "content": head,
        "tool_calls": [{"type": "function", "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}],
    }
    trace = read_traces(write_lines(tmp_path / "t.jsonl", [line]))[0]
    assert trace.turns[0] == head + "\n<tool_call>\n" + json.dumps(call) + "\n</tool_call>"
    assert trace.preset.frames.per_video == 8 and [d.key for d in trace.dimensions] == ["TA", "VQ", "MQ"]


def _wrong_answer(line):
    text = line["conversation"][-1]["content"]
    line["conversation"][-1]["content"] = text.replace("OA=", "OA=9")
    return line


def _swap_overall(line):
    v = verdicts_from_label(line["label"])["OA"]
    text = line["conversation"][-1]["content"]
    line["conversation"][-1]["content"] = text.replace(f"OA={v}", f"OA={(v + 1) % 3}")
    return line


def _four_calls(line):
    call, tool, answer = line["conversation"]
    line["conversation"] = [call, tool] * 4 + [answer]
    return line


BAD_LINES = {
    "malformed JSON": (lambda line: "{not json", "malformed JSON"),
    "missing field": (lambda line: {k: v for k, v in line.items() if k != "prompt"}, r"missing field\(s\) \['prompt'\]"),
    "unknown field": (lambda line: {**line, "score": 1}, r"unknown field\(s\) \['score'\]"),
    "bad label": (lambda line: {**line, "label": {**line["label"], "TA": "c"}}, "label 'TA' has value 'c'"),
    "unknown preset field": (lambda line: {**line, "preset_overrides": ["frames.count=3"]}, "frames.count"),
    "unknown preset": (lambda line: {**line, "preset": "vr-thinker-9"}, "unknown preset"),
    "unknown dimension set": (lambda line: {**line, "dimensions": "imagereward"}, "no dimension set 'imagereward'"),
    "missing video": (lambda line: {**line, "video_1": "nowhere.mp4"}, "video_1 .*nowhere.mp4.* does not exist"),
    "tool without frames": (
        lambda line: {**line, "conversation": [line["conversation"][0], {"role": "tool"}, line["conversation"][2]]},
        r"conversation\[1\]: a tool message needs 'frames'",
    ),
    "frames differ": (
        lambda line: {**line, "conversation": [line["conversation"][0], {"role": "tool", "frames": [1]},
                                               line["conversation"][2]]},
        "the environment showed frames .* but the trace records \\[1\\]",
    ),
    "other pool": (lambda line: {**line, "preset_overrides": ["frames.per_video=4", "frames.max_per_call=4"]},
                   "the environment showed frames \\[\\] but"),
    "no think": (
        lambda line: {**line, "conversation": [{"role": "assistant", "content": "<final answer>OA=1</final answer>"}]},
        "turn 0 is not well-formed .*missing_tag",
    ),
    "ends with a tool result": (
        lambda line: {**line, "conversation": line["conversation"][:2]},
        "conversation must end with the assistant's answer",
    ),
    "bad answer value": (_wrong_answer, "turn 1 is not well-formed .*bad_value"),
    "over budget": (_four_calls, "turn 3 ended the episode with status tool_budget_exceeded"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_import_lines_name_file_and_line(records, tmp_path, case):
    mutate, message = BAD_LINES[case]
    good = raw_trace(records[0])
    path = write_lines(tmp_path / "t.jsonl", [good, "", mutate(raw_trace(records[1]))])
    with pytest.raises(TraceError, match=f"{re.escape(str(path))}:3.*{message}"):
        read_traces(path)
    kept = read_traces(path, skip_invalid=True)
    assert [t.id for t in kept] == [records[0].id] and len(kept.skipped) == 1


def test_require_correct_and_duplicate_ids(records, tmp_path):
    wrong = write_lines(tmp_path / "w.jsonl", [_swap_overall(raw_trace(records[0]))])
    assert len(read_traces(wrong)) == 1  # a wrong verdict is still a clean episode
    with pytest.raises(TraceError, match=f"{re.escape(str(wrong))}:1 \\(id '{records[0].id}'\\).*disagree with the label on \\['OA'\\]"):
        read_traces(wrong, require_correct=True)
    dup = write_lines(tmp_path / "d.jsonl", [raw_trace(records[0]), raw_trace(records[0])])
    with pytest.raises(TraceError, match=f"{re.escape(str(dup))}:2.*duplicate id \\(first seen on line 1\\)"):
        read_traces(dup)


def test_trace_without_label_is_accepted_for_training_but_not_for_correctness(records, tmp_path):
    line = raw_trace(records[0], label=None, dimensions="videogen")
    path = write_lines(tmp_path / "t.jsonl", [line])
    assert read_traces(path)[0].label is None
    with pytest.raises(TraceError, match="require_correct needs a label"):
        read_traces(path, require_correct=True)
    assert isinstance(read_traces(path, validate=False)[0], EpisodeTrace)
