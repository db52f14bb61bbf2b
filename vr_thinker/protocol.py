"""The VR-Thinker turn protocol of a preset: what an assistant turn must look like, what the tool does with it, the
messages of an episode and how verdicts map to record labels.

An assistant turn (tags as in the official code; whitespace between blocks is free, any other text outside them
is a format error)::

    <synthesis> what the frames showed </synthesis>
    <think> reasoning </think>
    then EITHER
    <recommend answer>TA=1, VQ=0, MQ=1, OA=1, CF=2</recommend answer>
    <tool_call>{"name": "select_frames", "arguments": {"target_frames": [13, 25, 61, 73]}}</tool_call>
    OR
    <final answer>TA=1, VQ=0, MQ=1, OA=1</final answer>

Frame numbers are 1-based over the two pools concatenated: Video 1 is 1..P, Video 2 P+1..2P (P frames per video).
Verdict values: 1 = Video 1 better, 2 = Video 2 better, 0 = tie; ``CF`` (1-3, high to low) is the confidence of a
recommended answer. A ``\\boxed{V}`` inside the final answer is its overall verdict (the official reward reads the
box) and must agree with ``OA`` when both are given.

:func:`check_turn` states the protocol in one place: format validity, the parsed tool call and its result (frames
to show, or the notice / error text for the model), whether the turn ends the episode, and the answer. It never
raises on model output. Deliberate differences from the official code are listed in docs/vr_thinker_protocol.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image

from vr_thinker.presets import DimensionSpec, ProtocolPreset, fill

TOOL_NAME = "select_frames"
OVERALL = "overall"  # the record label key of the overall verdict
LABEL_VERDICTS = {"a": 1, "b": 2, "tie": 0}

Message = dict[str, Any]


class ProblemCode(str, Enum):
    """Everything that can be wrong with an assistant turn (format) or its tool call (answered by the tool)."""

    # format of the turn
    TRUNCATED = "truncated"  # generation hit the token limit
    MISSING_TAG = "missing_tag"
    UNCLOSED_TAG = "unclosed_tag"
    DUPLICATE_TAG = "duplicate_tag"
    STRAY_CLOSING_TAG = "stray_closing_tag"
    TAG_ORDER = "tag_order"
    TEXT_OUTSIDE_TAGS = "text_outside_tags"
    NO_ACTION = "no_action"  # neither a tool call nor a final answer
    CALL_AND_ANSWER = "call_and_answer"
    CALL_WITHOUT_RECOMMEND = "call_without_recommend"
    RECOMMEND_WITHOUT_CALL = "recommend_without_call"
    MULTIPLE_TOOL_CALLS = "multiple_tool_calls"
    ANSWER_SYNTAX = "answer_syntax"
    UNKNOWN_KEY = "unknown_key"
    DUPLICATE_KEY = "duplicate_key"
    MISSING_KEY = "missing_key"
    BAD_VALUE = "bad_value"
    BAD_CONFIDENCE = "bad_confidence"
    MULTIPLE_BOXES = "multiple_boxes"
    BOX_DISAGREES = "box_disagrees"
    # the tool call (the turn stays well-formed; the tool answers with an error or a notice)
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"
    NOT_A_LIST = "not_a_list"
    NON_INT_FRAME = "non_int_frame"
    EMPTY_FRAMES = "empty_frames"
    OUT_OF_RANGE = "out_of_range"
    OVER_LIMIT = "over_limit"


@dataclass(frozen=True)
class Problem:
    code: ProblemCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


@dataclass
class ToolResult:
    """What the tool does with a call. kind: ``frames`` (show ``frames``, 0-based pool indices, in the order asked),
    ``notice`` (a message instead of frames: too many frames asked) or ``error`` (an execution error message).
    requested: the frame numbers as the call gave them (None when they could not be read)."""

    kind: str
    frames: list[int] = field(default_factory=list)
    message: str = ""
    requested: list[int] | None = None
    problem: Problem | None = None
    reduced: bool = False

    @property
    def error(self) -> bool:
        return self.kind == "error"


@dataclass
class TurnState:
    """What :func:`check_turn` needs besides the text.

    calls_made: tool calls the tool already answered in this episode; turn_index: 0-based number of this assistant
    turn; context_tokens / output_tokens: tokens of the context the turn was generated from and of the turn (None:
    not counted, no context cap); images: images in that context; truncated: generation stopped at the token limit;
    rng: draws the official over-limit reduction (None: a fresh seeded generator, so results repeat).
    """

    calls_made: int = 0
    turn_index: int = 0
    context_tokens: int | None = None
    output_tokens: int | None = None
    images: int = 0
    truncated: bool = False
    rng: np.random.Generator | None = None
    dimensions: Sequence[DimensionSpec] | None = None


@dataclass
class TurnCheck:
    """The protocol's reading of one assistant turn.

    format_valid: the turn follows the layout and its answer syntax (``problems`` says why not).
    tool_call: the tool's result for a call that runs (None: no call, or a call that does not run because the
        turn ends the episode). final: the turn ends the episode; end_reason says why (``answer``, ``no_tool_call``,
        ``format``, ``call_budget``, ``turn_limit``, ``context``, ``images``, or "" while it goes on).
    answer: verdicts of the final answer by answer key (with the overall key), None without one.
    recommend: the recommended answer's verdicts (with ``CF``), None without one.
    attempted_call: the turn ends with a tool call (whether or not it runs).
    """

    format_valid: bool
    problems: list[Problem]
    final: bool
    end_reason: str
    tool_call: ToolResult | None = None
    answer: dict[str, int] | None = None
    recommend: dict[str, int] | None = None
    attempted_call: bool = False
    synthesis: str | None = None
    think: str | None = None

    @property
    def codes(self) -> list[ProblemCode]:
        return [p.code for p in self.problems]


# ---------------------------------------------------------------------------------------------------- parsing


def _tags(preset: ProtocolPreset) -> list[str]:
    a = preset.answer
    return [a.synthesis_tag, a.think_tag, a.recommend_tag, "tool_call", a.final_tag]


@dataclass
class _Block:
    tag: str
    body: str
    start: int
    end: int


def _blocks(text: str, tags: Sequence[str], problems: list[Problem]) -> list[_Block]:
    """The tagged blocks in order. Inside a block only its own closing tag ends it; a closing tag with no opening
    and an opening tag never closed are problems."""
    pattern = re.compile("<(/?)(" + "|".join(re.escape(t) for t in tags) + ")>")
    blocks: list[_Block] = []
    pos = 0
    while True:
        match = pattern.search(text, pos)
        if match is None:
            return blocks
        closing, tag = match.group(1), match.group(2)
        if closing:
            problems.append(Problem(ProblemCode.STRAY_CLOSING_TAG, f"</{tag}> without <{tag}>"))
            pos = match.end()
            continue
        end = text.find(f"</{tag}>", match.end())
        if end < 0:
            problems.append(Problem(ProblemCode.UNCLOSED_TAG, f"<{tag}> is never closed"))
            blocks.append(_Block(tag, text[match.end():], match.start(), len(text)))
            return blocks
        blocks.append(_Block(tag, text[match.end():end], match.start(), end + len(tag) + 3))
        pos = end + len(tag) + 3


_BOX = re.compile(r"\\boxed\{([^{}]*)\}")
_PAIR = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")


def parse_answer(body: str, keys: Sequence[str], preset: ProtocolPreset, recommend: bool,
                 problems: list[Problem]) -> dict[str, int]:
    """Verdicts of an answer block (``KEY=V`` pairs separated by commas, semicolons or newlines; keys match
    case-insensitively). ``keys``: the dimension keys; the overall key is always expected, the confidence key in a
    recommended answer. A final answer may hold one ``\\boxed{V}``, read as the overall verdict."""
    ans = preset.answer
    where = ans.recommend_tag if recommend else ans.final_tag
    expected = [*keys, ans.overall_key] + ([ans.confidence_key] if recommend else [])
    by_lower = {k.lower(): k for k in expected}
    boxes = _BOX.findall(body)
    box = None
    if boxes and recommend:
        problems.append(Problem(ProblemCode.ANSWER_SYNTAX, f"<{where}> may not hold a \\boxed{{}}"))
    elif len(boxes) > 1:
        problems.append(Problem(ProblemCode.MULTIPLE_BOXES, f"<{where}> holds {len(boxes)} boxes"))
    elif boxes:
        value = boxes[0].strip()
        if value in ("0", "1", "2"):
            box = int(value)
        else:
            problems.append(Problem(ProblemCode.BAD_VALUE, f"\\boxed{{{value}}} is not 1, 2 or 0"))
    rest = _BOX.sub(" ", body)
    verdicts: dict[str, int] = {}
    for piece in re.split(r"[,;\n]", rest):
        if not piece.strip():
            continue
        match = _PAIR.match(piece)
        if match is None:
            problems.append(Problem(ProblemCode.ANSWER_SYNTAX, f"<{where}>: {piece.strip()[:60]!r} is not KEY=V"))
            continue
        key = by_lower.get(match.group(1).lower())
        if key is None:
            problems.append(Problem(ProblemCode.UNKNOWN_KEY, f"<{where}>: unknown key {match.group(1)!r}"))
            continue
        if key in verdicts:
            problems.append(Problem(ProblemCode.DUPLICATE_KEY, f"<{where}>: {key} is given twice"))
            continue
        value = match.group(2)
        allowed = ans.confidence_values if key == ans.confidence_key else (0, 1, 2)
        if not value.isdigit() or int(value) not in allowed:
            code = ProblemCode.BAD_CONFIDENCE if key == ans.confidence_key else ProblemCode.BAD_VALUE
            problems.append(Problem(code, f"<{where}>: {key}={value} is not one of {list(allowed)}"))
            continue
        verdicts[key] = int(value)
    if box is not None:
        if ans.overall_key in verdicts and verdicts[ans.overall_key] != box:
            problems.append(Problem(ProblemCode.BOX_DISAGREES,
                                    f"\\boxed{{{box}}} and {ans.overall_key}={verdicts[ans.overall_key]} disagree"))
        verdicts.setdefault(ans.overall_key, box)
    for key in expected:
        if key not in verdicts and not any(p.detail.startswith(f"<{where}>: {key}=") for p in problems):
            problems.append(Problem(ProblemCode.MISSING_KEY, f"<{where}> has no {key}"))
    return verdicts


def _parse_call(body: str) -> tuple[list[int] | None, Problem | None]:
    """Frame numbers of a ``select_frames`` call, or the problem the tool reports."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as err:
        return None, Problem(ProblemCode.INVALID_JSON, f"the tool call is not valid JSON: {err}")
    if not isinstance(call, dict):
        return None, Problem(ProblemCode.NOT_AN_OBJECT, "the tool call must be a JSON object with name and arguments")
    if call.get("name") != TOOL_NAME:
        return None, Problem(ProblemCode.UNKNOWN_TOOL, f"unknown tool {call.get('name')!r}; the tool is {TOOL_NAME}")
    args = call.get("arguments")
    if not isinstance(args, dict) or "target_frames" not in args:
        return None, Problem(ProblemCode.BAD_ARGUMENTS, "arguments must be an object with 'target_frames'")
    frames = args["target_frames"]
    if not isinstance(frames, list):
        return None, Problem(ProblemCode.NOT_A_LIST, "'target_frames' must be a list of frame numbers")
    # bool is an int subclass in Python; JSON true/false are not frame numbers.
    bad = [f for f in frames if not isinstance(f, int) or isinstance(f, bool)]
    if bad:
        return None, Problem(ProblemCode.NON_INT_FRAME, f"frame numbers must be integers, got {bad}")
    if not frames:
        return [], Problem(ProblemCode.EMPTY_FRAMES, "'target_frames' is empty")
    return list(frames), None


def reduce_frames(numbers: list[int], rng: np.random.Generator) -> list[int]:
    """The official reduction of a list above the per-call limit: first half, last half (``numbers[-n // 2:]``,
    the larger half for odd n), every second number, or a random half (sorted), each with probability 1/4."""
    n = len(numbers)
    choice = int(rng.integers(4))
    if choice == 0:
        return numbers[: n // 2]
    if choice == 1:
        return numbers[-n // 2:]
    if choice == 2:
        return numbers[::2]
    picked = rng.choice(np.arange(n), size=n // 2, replace=False)
    return sorted(numbers[i] for i in picked)


def run_tool(numbers: list[int] | None, problem: Problem | None, preset: ProtocolPreset,
             rng: np.random.Generator) -> ToolResult:
    """The tool's answer to a call: frames to show, or a notice / execution error for the model."""
    prompt, limit, total = preset.prompt, preset.frames.max_per_call, preset.total_frames
    if problem is not None:
        return ToolResult("error", message=fill(prompt.execution_error, message=problem.detail), requested=numbers,
                          problem=problem)
    assert numbers is not None
    outside = [x for x in numbers if not 1 <= x <= total]
    if outside:
        text = fill(prompt.out_of_range_message, total=total)
        return ToolResult("notice", message=fill(prompt.tool_notice, message=text), requested=numbers,
                          problem=Problem(ProblemCode.OUT_OF_RANGE, f"frames {outside} are outside 1-{total}"))
    shown, reduced = numbers, False
    if len(numbers) > limit:
        if preset.frames.over_limit == "reduce" and rng.random() < preset.frames.reduce_probability:
            shown, reduced = reduce_frames(numbers, rng)[:limit], True
        else:
            text = fill(prompt.over_limit_message, count=len(numbers), limit=limit)
            return ToolResult("notice", message=fill(prompt.tool_notice, message=text), requested=numbers,
                              problem=Problem(ProblemCode.OVER_LIMIT, f"{len(numbers)} frames asked, at most {limit}"))
    return ToolResult("frames", frames=[x - 1 for x in shown], requested=numbers, reduced=reduced)


def check_turn(text: str, state: TurnState, preset: ProtocolPreset) -> TurnCheck:
    """Read one assistant turn under ``preset`` (layout in the module docstring). Never raises on model output."""
    dims = state.dimensions if state.dimensions is not None else preset.dimensions()
    keys = [d.key for d in dims]
    ans = preset.answer
    problems: list[Problem] = []
    if state.truncated:
        problems.append(Problem(ProblemCode.TRUNCATED, "generation stopped at the token limit"))
    blocks = _blocks(text, _tags(preset), problems)
    order = [b.tag for b in blocks]
    for tag in set(order):
        if order.count(tag) > 1:
            code = ProblemCode.MULTIPLE_TOOL_CALLS if tag == "tool_call" else ProblemCode.DUPLICATE_TAG
            problems.append(Problem(code, f"<{tag}> appears {order.count(tag)} times"))
    # Text outside the blocks.
    pos, outside = 0, []
    for block in blocks:
        outside.append(text[pos:block.start])
        pos = block.end
    outside.append(text[pos:])
    if any(chunk.strip() for chunk in outside):
        problems.append(Problem(ProblemCode.TEXT_OUTSIDE_TAGS, "text outside the tags"))

    first = {}
    for block in blocks:
        first.setdefault(block.tag, block)
    for tag in (ans.synthesis_tag, ans.think_tag):
        if tag not in first:
            problems.append(Problem(ProblemCode.MISSING_TAG, f"no <{tag}>"))
    has_call, has_final, has_rec = "tool_call" in first, ans.final_tag in first, ans.recommend_tag in first
    if has_call and has_final:
        problems.append(Problem(ProblemCode.CALL_AND_ANSWER, "a tool call and a final answer in one turn"))
    elif not has_call and not has_final:
        problems.append(Problem(ProblemCode.NO_ACTION, f"neither a tool call nor <{ans.final_tag}>"))
    if has_call and not has_rec:
        problems.append(Problem(ProblemCode.CALL_WITHOUT_RECOMMEND, f"a tool call needs <{ans.recommend_tag}> first"))
    if has_rec and not has_call:
        problems.append(Problem(ProblemCode.RECOMMEND_WITHOUT_CALL, f"<{ans.recommend_tag}> must be followed by a call"))
    expected_order = [ans.synthesis_tag, ans.think_tag, ans.recommend_tag, "tool_call", ans.final_tag]
    seen = [t for t in dict.fromkeys(order)]
    if seen != sorted(seen, key=expected_order.index):
        problems.append(Problem(ProblemCode.TAG_ORDER, f"tags in the order {seen}; expected {expected_order}"))

    recommend = answer = None
    if has_rec:
        recommend = parse_answer(first[ans.recommend_tag].body, keys, preset, True, problems)
    if has_final:
        answer = parse_answer(first[ans.final_tag].body, keys, preset, False, problems)
    format_valid = not problems
    synthesis = first[ans.synthesis_tag].body.strip() if ans.synthesis_tag in first else None
    think = first[ans.think_tag].body.strip() if ans.think_tag in first else None

    # The turn is a tool call when it ends with one (as the official loop decides).
    attempted = text.rstrip().endswith("</tool_call>") and has_call
    check = TurnCheck(format_valid, problems, final=True, end_reason="", answer=answer, recommend=recommend,
                      attempted_call=attempted, synthesis=synthesis, think=think)
    if not attempted:
        check.end_reason = "answer" if has_final and format_valid else ("format" if not format_valid else "no_tool_call")
        return check
    limits = preset.limits
    if not format_valid:
        check.end_reason = "format"
    elif state.calls_made >= limits.max_tool_calls:
        check.end_reason = "call_budget"
    elif state.turn_index + 1 >= limits.max_turns:
        check.end_reason = "turn_limit"
    elif (limits.max_context_tokens is not None and state.context_tokens is not None
          and state.context_tokens + (state.output_tokens or 0) > limits.max_context_tokens):
        check.end_reason = "context"
    elif limits.max_images is not None and state.images > limits.max_images:
        check.end_reason = "images"
    if check.end_reason:
        return check
    numbers, problem = _parse_call(first["tool_call"].body)
    rng = state.rng if state.rng is not None else np.random.default_rng(0)
    check.tool_call = run_tool(numbers, problem, preset, rng)
    check.final = False
    return check


# --------------------------------------------------------------------------------------------------- messages


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def system_message(preset: ProtocolPreset, dimensions: Sequence[DimensionSpec]) -> Message:
    return {"role": "system", "content": [text_part(preset.system_text(dimensions))]}


def first_user_message(preset: ProtocolPreset, prompt: str, dimensions: Sequence[DimensionSpec],
                       frames: Sequence[Image.Image]) -> Message:
    """The initial frames (one video input, or images) followed by the task text."""
    media: list[dict[str, Any]]
    if preset.prompt.first_turn_media == "video":
        media = [{"type": "video", "video": list(frames), "fps": preset.prompt.initial_video_fps}]
    else:
        media = [{"type": "image", "image": frame} for frame in frames]
    return {"role": "user", "content": [*media, text_part(preset.first_turn_text(prompt, dimensions))]}


def tool_reply_message(preset: ProtocolPreset, result: ToolResult, images: Sequence[Image.Image] = ()) -> Message:
    """The tool's reply: the frames (after the reply text), or the notice / error text."""
    role = preset.prompt.tool_reply_role
    if result.kind == "frames":
        return {"role": role, "content": [text_part(preset.prompt.tool_reply),
                                          *({"type": "image", "image": image} for image in images)]}
    return {"role": role, "content": [text_part(result.message)]}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": [text_part(text)]}


# ----------------------------------------------------------------------------------------------------- labels


def label_verdicts(label: Mapping[str, str], preset: ProtocolPreset,
                   dimensions: Sequence[DimensionSpec] | None = None) -> dict[str, int]:
    """A record label ("a"/"b"/"tie" by label key, "overall" included) as verdicts by answer key. Dimensions the
    label lacks are left out; a value that is not a/b/tie raises naming it."""
    dims = dimensions if dimensions is not None else preset.dimensions()
    out = {}
    for key, label_key in [*((d.key, d.label) for d in dims), (preset.answer.overall_key, OVERALL)]:
        if label_key not in label:
            continue
        value = label[label_key]
        if value not in LABEL_VERDICTS:
            raise ValueError(f"label {label_key!r} has value {value!r}; expected one of {sorted(LABEL_VERDICTS)}")
        out[key] = LABEL_VERDICTS[value]
    if preset.answer.overall_key not in out:
        raise ValueError(f"label has no {OVERALL!r}: {dict(label)}")
    return out


def verdict_labels(verdicts: Mapping[str, int], preset: ProtocolPreset,
                   dimensions: Sequence[DimensionSpec] | None = None) -> dict[str, str]:
    """Verdicts by answer key as record label values ("a"/"b"/"tie") by label key ("overall" for the overall)."""
    dims = dimensions if dimensions is not None else preset.dimensions()
    names = {d.key: d.label for d in dims} | {preset.answer.overall_key: OVERALL}
    return {names[k]: preset.answer.verdicts[v] for k, v in verdicts.items() if k in names}
