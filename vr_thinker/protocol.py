"""VR-Thinker conversation protocol: prompts, the ``select_frames`` tool, message builders and a strict parser.

The judge compares two videos ("Video 1" and "Video 2") for a text prompt. It sees a few frames of each, may ask
for more with ``select_frames``, and ends with one verdict per dimension plus an overall verdict.

Assistant turn layout (whitespace between blocks is free; anything else outside the blocks is a problem)::

    <think> free-form reasoning </think>
    <synthesis> optional summary of what the frames showed </synthesis>
    then EITHER exactly one tool call (Hermes/Qwen format):
    <tool_call>
    {"name": "select_frames", "arguments": {"target_frames": [3, 10, 17]}}
    </tool_call>
    OR the final answer, one line per dimension (in any order) and an ``Overall`` line, nothing else:
    VQ: \\boxed{1}
    MQ: \\boxed{2}
    TA: \\boxed{0}
    Overall: \\boxed{1}

Verdicts: 1 = Video 1 is better, 2 = Video 2 is better, 0 = tie. Line names match case-insensitively; boxes
inside ``<think>``/``<synthesis>`` are ignored, so the model may reason about verdicts freely.

Frame addressing: every video is sampled into a frame pool; pool index ``i`` of Video 1 and of Video 2 is the
same position in the pool (with the default count-based pool, the same relative moment). ``target_frames`` are
pool indices and one call shows the chosen indices of *both* videos, so the model compares the same moments.

Messages use the transformers multimodal chat format (``{"type": "image", "image": PIL.Image}`` /
``{"type": "text", "text": ...}`` parts); assistant turns keep the generated text verbatim (tool call included)
so re-rendering a conversation reproduces exactly the tokens the model produced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from PIL import Image

TOOL_NAME = "select_frames"
OVERALL = "overall"
OVERALL_LINE_NAME = "Overall"
VERDICT_VALUES = (0, 1, 2)
VERDICT_FROM_LABEL = {"a": 1, "b": 2, "tie": 0}

DEFAULT_DIMENSIONS: dict[str, str] = {
    "VQ": "visual quality: sharpness, artifacts, aesthetics of individual frames",
    "MQ": "motion quality: smooth, physically plausible, temporally consistent motion",
    "TA": "text alignment: how well the video matches the prompt",
}

DimensionsLike = Mapping[str, str] | Sequence[str]


class ProblemCode(str, Enum):
    """Names of everything that can be wrong with an assistant turn (parser and environment)."""

    TRUNCATED = "truncated"  # generation hit the token limit or a block tag is never closed
    NO_THINK = "no_think"
    TEXT_BEFORE_THINK = "text_before_think"
    MULTIPLE_THINK = "multiple_think"
    MISPLACED_SYNTHESIS = "misplaced_synthesis"
    UNBALANCED_TAG = "unbalanced_tag"  # a closing tag without its opening tag
    NO_ACTION = "no_action"  # neither a tool call nor an answer
    UNEXPECTED_TEXT = "unexpected_text"
    MULTIPLE_TOOL_CALLS = "multiple_tool_calls"
    TOOL_CALL_AND_ANSWER = "tool_call_and_answer"
    NO_JSON = "no_json"
    INVALID_JSON = "invalid_json"
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    WRONG_KEY = "wrong_key"
    NOT_A_LIST = "not_a_list"
    NON_INT_INDEX = "non_int_index"
    EMPTY_FRAMES = "empty_frames"
    MISSING_BOX = "missing_box"
    UNKNOWN_BOX_VALUE = "unknown_box_value"
    MULTIPLE_BOXES = "multiple_boxes"
    UNKNOWN_DIMENSION = "unknown_dimension"
    DUPLICATE_VERDICT = "duplicate_verdict"
    MISSING_VERDICT = "missing_verdict"
    # Found by the environment, which knows the frame pool and the budget.
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    TOO_MANY_FRAMES = "too_many_frames"


@dataclass(frozen=True)
class Problem:
    code: ProblemCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


@dataclass
class ParsedTurn:
    """Typed result of :func:`parse_assistant_turn`.

    kind: "tool_call" / "answer" for a turn without problems, else "invalid".
    attempted: what the turn tried to do even when invalid ("tool_call" when any ``<tool_call>`` tag is present,
        "answer" when the text after the reasoning has a ``\\boxed{}`` or a line naming a dimension or Overall,
        else "none"); the environment uses it to decide between a retry and ending the episode (answer).
    verdicts: the verdicts that could be read (dimension name as given by the caller, plus "overall"), also for an
        invalid answer, so a partly broken answer still scores the verdicts it carries.
    """

    kind: Literal["tool_call", "answer", "invalid"]
    attempted: Literal["tool_call", "answer", "none"]
    think: str | None = None
    synthesis: str | None = None
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    target_frames: list[int] | None = None
    verdicts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def codes(self) -> list[ProblemCode]:
        return [p.code for p in self.problems]


@dataclass(frozen=True)
class Frame:
    """One pool frame shown to the model. video: 1 or 2; index: pool index; timestamp in seconds if known."""

    video: int
    index: int
    image: Image.Image
    timestamp: float | None = None

    @property
    def label(self) -> str:
        time = f" ({self.timestamp:.2f} s)" if self.timestamp is not None else ""
        return f"Video {self.video}, frame {self.index}{time}:"


# ----------------------------------------------------------------------------------------------------------- prompts


def normalize_dimensions(dimensions: DimensionsLike) -> dict[str, str]:
    """Dimension name -> description. Names must be unique (case-insensitively), non-empty, single words of
    letters/digits/underscores, and not "overall" (always judged separately)."""
    if isinstance(dimensions, Mapping):
        items = [(str(k), str(v)) for k, v in dimensions.items()]
    else:
        items = [(str(k), DEFAULT_DIMENSIONS.get(str(k), "")) for k in dimensions]
    seen: set[str] = set()
    for name, _ in items:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"dimension name {name!r} must be a word of letters, digits and underscores")
        if name.lower() == OVERALL or name.lower() in seen:
            raise ValueError(f"dimension name {name!r} is reserved or repeated")
        seen.add(name.lower())
    return dict(items)


def select_frames_tool(max_frames_per_call: int = 8) -> dict[str, Any]:
    """The ``select_frames`` schema in the OpenAI/Qwen function format (pass as ``tools=[...]``)."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": (
                "Show more frames of both videos. Each index is a position in the frame pool; the same "
                f"positions of Video 1 and Video 2 are shown. At most {max_frames_per_call} indices per call."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "target_frames": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": "Frame pool indices (0-based) to view in both videos.",
                    }
                },
                "required": ["target_frames"],
            },
        },
    }


SELECT_FRAMES_TOOL = select_frames_tool()


def build_system_prompt(max_tool_calls: int = 3, max_frames_per_call: int = 8) -> str:
    return (
        "You are a careful video judge. You compare two videos generated for the same text prompt, Video 1 and "
        "Video 2, on several quality dimensions and overall.\n"
        "You first see a few frames of each video. Each frame is labelled with its video and its index in the "
        "video's frame pool. If you need to see more, call the select_frames tool with pool indices: it shows the "
        f"frames at those indices in both videos, at most {max_frames_per_call} indices per call and at most "
        f"{max_tool_calls} calls in total. Older tool images may be removed from your context; keep notes.\n"
        "Every reply starts with your reasoning inside <think>...</think>, optionally followed by a summary of "
        "what the frames showed inside <synthesis>...</synthesis>. Then give EITHER exactly one tool call:\n"
        '<tool_call>\n{"name": "select_frames", "arguments": {"target_frames": [2, 9]}}\n</tool_call>\n'
        "OR your final answer: one line per dimension and a last line for the overall verdict, each of the form "
        "`NAME: \\boxed{V}` where V is 1 if Video 1 is better, 2 if Video 2 is better, 0 for a tie. "
        "Write nothing else after the reasoning."
    )


SYSTEM_PROMPT = build_system_prompt()


def answer_template(dimensions: DimensionsLike) -> str:
    """The expected answer lines, e.g. ``VQ: \\boxed{1|2|0}`` ... ``Overall: \\boxed{1|2|0}``."""
    names = [*normalize_dimensions(dimensions), OVERALL_LINE_NAME]
    return "\n".join(f"{name}: \\boxed{{1|2|0}}" for name in names)


def system_message(text: str = SYSTEM_PROMPT) -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def build_first_user_message(
    prompt: str,
    dimensions: DimensionsLike,
    frames: Sequence[Frame],
    pool_sizes: tuple[int, int],
) -> dict[str, Any]:
    """First user turn: the prompt, the dimensions, the pool sizes and the initial frames (each labelled)."""
    dims = normalize_dimensions(dimensions)
    dim_lines = "\n".join(f"- {name}: {desc}" if desc else f"- {name}" for name, desc in dims.items())
    header = (
        f'Prompt: "{prompt}"\n\n'
        f"Judge these dimensions and overall:\n{dim_lines}\n\n"
        f"Frame pools: Video 1 has frames 0-{pool_sizes[0] - 1}, Video 2 has frames 0-{pool_sizes[1] - 1}.\n"
        "Initial frames:\n"
    )
    content: list[dict[str, Any]] = [{"type": "text", "text": header}]
    content += _frame_parts(frames)
    content.append({"type": "text", "text": f"\nFinal answer format:\n{answer_template(dims)}"})
    return {"role": "user", "content": content}


def build_frames_message(frames: Sequence[Frame], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Tool result of a successful ``select_frames`` call: labelled frames, then any notes."""
    indices = sorted({f.index for f in frames})
    content: list[dict[str, Any]] = [{"type": "text", "text": f"Frames {indices}:\n"}]
    content += _frame_parts(frames)
    if notes:
        content.append({"type": "text", "text": "\n" + "\n".join(notes)})
    return {"role": "tool", "content": content}


def build_feedback_message(problems: Sequence[Problem], as_tool: bool, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Observation after an unusable turn. A broken tool call is answered in the tool role (it is the call's
    result); any other unusable turn gets a user message."""
    lines = ["Your last message could not be used:", *(f"- {p}" for p in problems), *notes]
    lines.append(
        "Reply with <think>...</think>, then either one <tool_call> for select_frames or the final answer lines."
    )
    return {"role": "tool" if as_tool else "user", "content": [{"type": "text", "text": "\n".join(lines)}]}


def build_assistant_message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def image_placeholder() -> dict[str, Any]:
    """What replaces a frame image that left the memory window (its label text stays in front of it)."""
    return {"type": "text", "text": "[image removed from context]\n"}


def _frame_parts(frames: Sequence[Frame]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for frame in frames:
        parts.append({"type": "text", "text": f"{frame.label}\n"})
        parts.append({"type": "image", "image": frame.image})
    return parts


def verdicts_from_label(label: Mapping[str, str]) -> dict[str, int]:
    """Record label ("a"/"b"/"tie" per dimension, Video 1 = side a) -> protocol verdicts (1/2/0)."""
    out = {}
    for dim, value in label.items():
        if value not in VERDICT_FROM_LABEL:
            raise ValueError(f"label {dim!r} has value {value!r}; expected one of {sorted(VERDICT_FROM_LABEL)}")
        out[dim] = VERDICT_FROM_LABEL[value]
    return out


# ------------------------------------------------------------------------------------------------------------ parser

_TAG = re.compile(r"<(/?)(think|synthesis|tool_call)>")
_BOX = re.compile(r"\\boxed\{([^{}]*)\}")
_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*:\s*(.*)$")


@dataclass
class _Block:
    kind: Literal["text", "think", "synthesis", "tool_call"]
    body: str
    closed: bool = True


def _split_blocks(text: str, problems: list[Problem]) -> list[_Block]:
    """Split the text into tagged blocks and free text. Inside a block only its own closing tag ends it."""
    blocks: list[_Block] = []
    pos = 0
    while True:
        match = _TAG.search(text, pos)
        if match is None:
            blocks.append(_Block("text", text[pos:]))
            return [b for b in blocks if b.kind != "text" or b.body.strip()]
        closing, name = match.group(1), match.group(2)
        blocks.append(_Block("text", text[pos : match.start()]))
        if closing:
            problems.append(Problem(ProblemCode.UNBALANCED_TAG, f"</{name}> without <{name}>"))
            pos = match.end()
            continue
        end = text.find(f"</{name}>", match.end())
        if end < 0:
            problems.append(Problem(ProblemCode.TRUNCATED, f"<{name}> is never closed"))
            blocks.append(_Block(name, text[match.end() :], closed=False))  # type: ignore[arg-type]
            return [b for b in blocks if b.kind != "text" or b.body.strip()]
        blocks.append(_Block(name, text[match.end() : end]))  # type: ignore[arg-type]
        pos = end + len(name) + 3


def _parse_tool_call(body: str, problems: list[Problem]) -> tuple[str | None, dict | None, list[int] | None]:
    body = body.strip()
    try:
        call = json.loads(body)
    except json.JSONDecodeError as err:
        if "{" not in body:
            problems.append(Problem(ProblemCode.NO_JSON, f"tool call holds no JSON object: {body[:80]!r}"))
        else:
            problems.append(Problem(ProblemCode.INVALID_JSON, f"tool call is not valid JSON ({err.msg})"))
        return None, None, None
    if not isinstance(call, dict):
        problems.append(Problem(ProblemCode.INVALID_JSON, "tool call JSON must be an object"))
        return None, None, None
    name, args = call.get("name"), call.get("arguments")
    if name != TOOL_NAME:
        problems.append(Problem(ProblemCode.UNKNOWN_TOOL, f"unknown tool {name!r}; the only tool is {TOOL_NAME}"))
    extra = sorted(set(call) - {"name", "arguments"})
    if extra:
        problems.append(Problem(ProblemCode.WRONG_KEY, f"unexpected keys {extra} in the tool call"))
    if not isinstance(args, dict):
        problems.append(Problem(ProblemCode.INVALID_ARGUMENTS, "'arguments' must be a JSON object"))
        return name if isinstance(name, str) else None, None, None
    if set(args) != {"target_frames"}:
        problems.append(
            Problem(ProblemCode.WRONG_KEY, f"arguments must have exactly the key 'target_frames', got {sorted(args)}")
        )
        return name, args, None
    frames = args["target_frames"]
    if not isinstance(frames, list):
        problems.append(Problem(ProblemCode.NOT_A_LIST, "'target_frames' must be a list of integers"))
        return name, args, None
    # bool is an int subclass in Python; JSON true/false are not frame indices.
    bad = [f for f in frames if not isinstance(f, int) or isinstance(f, bool)]
    if bad:
        problems.append(Problem(ProblemCode.NON_INT_INDEX, f"frame indices must be integers, got {bad}"))
        return name, args, None
    if not frames:
        problems.append(Problem(ProblemCode.EMPTY_FRAMES, "'target_frames' is empty"))
        return name, args, None
    return name, args, list(frames)


def _parse_answer(text: str, dims: Mapping[str, str], problems: list[Problem]) -> dict[str, int]:
    names = {name.lower(): name for name in dims}
    names[OVERALL] = OVERALL
    verdicts: dict[str, int] = {}
    mentioned: set[str] = set()  # names that have a line, even a broken one (reported there, not as missing)
    if "\\boxed" not in text:
        problems.append(Problem(ProblemCode.MISSING_BOX, "the answer has no \\boxed{} verdicts"))
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            problems.append(Problem(ProblemCode.UNEXPECTED_TEXT, f"not a `NAME: \\boxed{{V}}` line: {line[:80]!r}"))
            continue
        shown = match.group(1)
        key = names.get(shown.lower())
        if key is None:
            problems.append(Problem(ProblemCode.UNKNOWN_DIMENSION, f"unknown dimension {shown!r}"))
            continue
        if key in mentioned:
            problems.append(Problem(ProblemCode.DUPLICATE_VERDICT, f"{shown} is given twice"))
            continue
        mentioned.add(key)
        value = match.group(2).strip()
        boxes = _BOX.findall(value)
        if not boxes:
            problems.append(Problem(ProblemCode.MISSING_BOX, f"{shown} has no \\boxed{{}} verdict"))
            continue
        if len(boxes) > 1:
            problems.append(Problem(ProblemCode.MULTIPLE_BOXES, f"{shown} has {len(boxes)} boxes"))
            continue
        if _BOX.fullmatch(value) is None:
            problems.append(Problem(ProblemCode.UNEXPECTED_TEXT, f"text around the box in {line[:80]!r}"))
        box = boxes[0].strip()
        if box not in {"0", "1", "2"}:
            problems.append(Problem(ProblemCode.UNKNOWN_BOX_VALUE, f"{shown}: \\boxed{{{box}}} is not 1, 2 or 0"))
            continue
        verdicts[key] = int(box)
    for name in [*dims, OVERALL]:
        if name not in mentioned:
            line_name = OVERALL_LINE_NAME if name == OVERALL else name
            problems.append(Problem(ProblemCode.MISSING_VERDICT, f"no {line_name} line"))
    return verdicts


def _looks_like_answer(text: str, dims: Mapping[str, str]) -> bool:
    """An answer attempt has a box or at least one line naming a dimension or Overall; other free text is not
    an answer (the model gets a retry instead of ending the episode)."""
    if _BOX.search(text):
        return True
    names = {name.lower() for name in dims} | {OVERALL}
    lines = (_LINE.match(line.strip()) for line in text.splitlines())
    return any(m is not None and m.group(1).lower() in names for m in lines)


def parse_assistant_turn(text: str, dimensions: DimensionsLike, truncated: bool = False) -> ParsedTurn:
    """Parse one assistant turn strictly (layout in the module docstring).

    truncated: set by the caller when generation stopped at its token limit (no end-of-turn token); the turn is
    then invalid even if it looks complete. Never raises on model output.
    """
    dims = normalize_dimensions(dimensions)
    problems: list[Problem] = []
    if truncated:
        problems.append(Problem(ProblemCode.TRUNCATED, "generation stopped at the token limit"))
    blocks = _split_blocks(text, problems)

    thinks = [i for i, b in enumerate(blocks) if b.kind == "think"]
    think = synthesis = None
    rest_start = 0
    if not thinks:
        problems.append(Problem(ProblemCode.NO_THINK, "the turn must start with <think>...</think>"))
    else:
        think = blocks[thinks[0]].body.strip()
        rest_start = thinks[-1] + 1
        if len(thinks) > 1:
            problems.append(Problem(ProblemCode.MULTIPLE_THINK, f"{len(thinks)} <think> blocks"))
        if thinks[0] != 0:
            problems.append(Problem(ProblemCode.TEXT_BEFORE_THINK, "text before <think>"))
    rest = blocks[rest_start:]
    if rest and rest[0].kind == "synthesis":
        synthesis = rest[0].body.strip()
        rest = rest[1:]
    if any(b.kind == "synthesis" for b in rest):
        problems.append(Problem(ProblemCode.MISPLACED_SYNTHESIS, "<synthesis> must directly follow </think>"))
        rest = [b for b in rest if b.kind != "synthesis"]

    calls = [b for b in rest if b.kind == "tool_call"]
    texts = [b for b in rest if b.kind == "text"]
    if calls:
        if len(calls) > 1:
            problems.append(Problem(ProblemCode.MULTIPLE_TOOL_CALLS, f"{len(calls)} tool calls; one per turn"))
        if any(_BOX.search(b.body) for b in texts):
            problems.append(Problem(ProblemCode.TOOL_CALL_AND_ANSWER, "a tool call and an answer in one turn"))
        elif texts:
            problems.append(Problem(ProblemCode.UNEXPECTED_TEXT, "text outside the tool call"))
        name = args = frames = None
        if calls[0].closed:
            name, args, frames = _parse_tool_call(calls[0].body, problems)
        ok = not problems
        return ParsedTurn(
            kind="tool_call" if ok else "invalid",
            attempted="tool_call",
            think=think,
            synthesis=synthesis,
            tool_name=name,
            tool_args=args,
            target_frames=frames,
            problems=problems,
        )
    answer = "\n".join(b.body for b in texts)
    if not _looks_like_answer(answer, dims):
        if not any(p.code == ProblemCode.TRUNCATED for p in problems):
            detail = "no tool call and no answer (`NAME: \\boxed{V}` lines) after the reasoning"
            problems.append(Problem(ProblemCode.NO_ACTION, detail))
        return ParsedTurn("invalid", "none", think=think, synthesis=synthesis, problems=problems)
    verdicts = _parse_answer(answer, dims, problems)
    return ParsedTurn(
        kind="invalid" if problems else "answer",
        attempted="answer",
        think=think,
        synthesis=synthesis,
        verdicts=verdicts,
        problems=problems,
    )
