"""Cold-start traces for VR-Thinker SFT: written by a teacher from known ground truth, or imported.

A trace is one recorded judging episode: the prompt, the two videos, the assistant turns in order and the frame
indices each tool call showed. Replaying it through :class:`~vr_thinker.env.VideoPairEnv` rebuilds the exact
conversation (frames, observations, memory window), so a trace file stays small and every trace is checked to be a
valid episode: every turn parses, every tool call is accepted, the frames shown match the recorded ones, and the
episode ends with an answer.

Sources:
- :func:`teacher_trace` writes a trace for a labelled synthetic video pair from its label and ``meta`` (what each
  side draws, its degradation, its motion): the first turn describes the initial frames, tool calls look at runs of
  consecutive frames (where jitter or a frozen clip shows), and the answer states the labelled verdicts with the
  reason for each. 0-3 tool calls per trace, chosen per pair by a seeded generator.
- :func:`read_traces` imports traces produced by a stronger judge (same JSONL format; see below) and validates
  every line by replaying it; a bad line raises :class:`TraceError` naming ``file:line``.

Trace JSONL, one object per line::

    {"id": "pair-1", "prompt": "two red circles",
     "video_1": "videos/a.mp4", "video_2": "videos/b.mp4",      # relative to the JSONL's folder, or absolute
     "dimensions": {"VQ": "...", "MQ": "...", "TA": "..."},    # optional: names (list) or name -> description
     "label": {"VQ": "a", "MQ": "tie", "TA": "a", "overall": "a"},   # optional; "a" = Video 1
     "env": {"pool_frames": 16, "memory_window": 1},           # optional: EnvConfig fields the episode used
     "source": "teacher",                                      # optional free text
     "conversation": [
        {"role": "assistant", "content": "<think>...</think>\\n<tool_call>\\n{...}\\n</tool_call>"},
        {"role": "tool", "frames": [6, 7, 8, 9]},
        {"role": "assistant", "content": "<think>...</think>\\nVQ: \\\\boxed{1}\\n...Overall: \\\\boxed{1}"}]}

An assistant turn may instead carry its call in the OpenAI form, ``"tool_calls": [{"function": {"name":
"select_frames", "arguments": {"target_frames": [...]}}}]``; it is turned into the protocol's ``<tool_call>`` text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, overload

import numpy as np

from mmreward.data.media import MediaError
from mmreward.data.records import PreferenceRecord
from vr_thinker.env import EnvConfig, EpisodeStatus, VideoPairEnv
from vr_thinker.protocol import (
    DEFAULT_DIMENSIONS,
    OVERALL,
    OVERALL_LINE_NAME,
    TOOL_NAME,
    normalize_dimensions,
    verdicts_from_label,
)

DIMENSION_NAMES = {"VQ": "visual quality", "MQ": "motion quality", "TA": "text alignment"}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_TRACE_FIELDS = {"id", "prompt", "video_1", "video_2", "dimensions", "label", "env", "source", "conversation"}
_ENV_FIELDS = {f.name for f in fields(EnvConfig)}


class TraceError(ValueError):
    """A trace that is not a valid episode; the message names the file, line and trace id when known."""

    def __init__(self, reason: str, path: str | Path | None = None, line: int | None = None, trace_id: str | None = None):
        self.reason = reason
        where = str(path) if path is not None else "<trace>"
        if line is not None:
            where += f":{line}"
        if trace_id is not None:
            where += f" (id {trace_id!r})"
        super().__init__(f"{where}: {reason}")


@dataclass
class EpisodeTrace:
    """One recorded episode. ``turns``: assistant texts in order; ``frames``: pool indices shown after each
    accepted tool call (as the environment showed them: sorted, distinct); ``label``: record label or None."""

    id: str
    prompt: str
    video_1: Path
    video_2: Path
    turns: list[str]
    frames: list[list[int]]
    dimensions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DIMENSIONS))
    label: dict[str, str] | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    source: str = ""

    @property
    def num_tool_calls(self) -> int:
        return len(self.frames)

    def make_env(self) -> VideoPairEnv:
        return VideoPairEnv(self.prompt, self.video_1, self.video_2, self.dimensions, self.env)


def trace_from_env(
    env: VideoPairEnv,
    trace_id: str,
    video_1: str | Path,
    video_2: str | Path,
    label: Mapping[str, str] | None = None,
    source: str = "",
) -> EpisodeTrace:
    """Record a finished episode (e.g. a sampled rollout kept by rejection sampling) as a trace. The environment
    does not know its video files, so their paths are given."""
    if not env.done:
        raise ValueError(f"{trace_id}: the episode is not finished")
    return EpisodeTrace(
        id=trace_id,
        prompt=env.prompt,
        video_1=Path(video_1),
        video_2=Path(video_2),
        turns=[t.text for t in env.turns],
        frames=[list(t.frames) for t in env.turns if t.frames],
        dimensions=dict(env.dimensions),
        label=dict(label) if label is not None else None,
        env=env.config,
        source=source,
    )


# ------------------------------------------------------------------------------------------------------- replay


def replay(trace: EpisodeTrace, require_correct: bool = False) -> VideoPairEnv:
    """Run the trace through a fresh environment and return it finished; raise ``ValueError`` naming the first
    turn that is not a valid step of a clean episode (or, with ``require_correct``, a verdict that is wrong)."""
    env = trace.make_env()
    env.reset()
    calls = iter(trace.frames)
    for number, text in enumerate(trace.turns):
        if env.done:
            raise ValueError(f"turn {number}: the episode already ended ({env.status.value}) before it")
        result = env.step(text)
        problems = env.turns[-1].problems
        if problems:
            raise ValueError(f"turn {number} is not valid ({result.status.value}): " + "; ".join(map(str, problems)))
        if result.status == EpisodeStatus.RUNNING:
            expected = next(calls, None)
            if expected is None:
                raise ValueError(f"turn {number} called {TOOL_NAME} but the trace records no frames for the call")
            if list(result.info["frames"]) != list(expected):
                raise ValueError(
                    f"turn {number}: the environment showed frames {result.info['frames']} but the trace records "
                    f"{list(expected)} (different frame pool settings?)"
                )
        elif result.status != EpisodeStatus.ANSWERED:
            raise ValueError(f"turn {number} ended the episode with status {result.status.value}")
    if not env.done:
        raise ValueError(f"the trace ends after {len(trace.turns)} turns without an answer")
    if next(calls, None) is not None:
        raise ValueError(f"the trace records {len(trace.frames)} tool results but made {env.num_tool_calls} calls")
    if require_correct:
        if trace.label is None:
            raise ValueError("require_correct needs a label")
        wrong = [k for k, v in verdicts_from_label(trace.label).items() if env.verdicts.get(k) != v]
        if wrong:
            raise ValueError(f"verdicts {env.verdicts} disagree with the label on {wrong}")
    return env


# ---------------------------------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TeacherConfig:
    """How teacher traces are written.

    style: "full" writes reasoning that describes what each video shows, and a synthesis after each tool result
        (notes that survive the memory window); "brief" writes short fixed phrases with the same actions and
        verdicts (a tiny test model learns the format from it in a few steps).
    motion_frames: consecutive pool frames per tool call (capped by the env's ``max_frames_per_call``).
    skip_evident_share: share of pairs whose motion fault is visible in the initial frames (a frozen clip) that
        are answered without a tool call.
    second_look_share / third_look_share: share of traces that check a second (then third) stretch of frames.
    seed: with the pair id, picks the number of calls and the frames; the same seed gives the same traces.
    """

    style: str = "full"
    motion_frames: int = 4
    skip_evident_share: float = 0.5
    second_look_share: float = 0.3
    third_look_share: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in ("full", "brief"):
            raise ValueError(f"style must be 'full' or 'brief', got {self.style!r}")
        if self.motion_frames < 2:
            raise ValueError(f"motion_frames must be >= 2 (motion needs consecutive frames), got {self.motion_frames}")
        for name in ("skip_evident_share", "second_look_share", "third_look_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class _SideFacts:
    """What one side of a synthetic pair shows (from the record's meta)."""

    content: str
    matches: bool
    quality: str  # "none" | "noise" | "blur"
    motion: str  # "smooth" | "jitter" | "frozen"


def _side_facts(record: PreferenceRecord, side: str) -> _SideFacts:
    meta = record.meta.get(side)
    needed = ("color", "shape", "count", "matches_prompt", "degradation", "motion")
    if not isinstance(meta, dict) or any(k not in meta for k in needed):
        raise ValueError(
            f"record {record.id!r}: meta[{side!r}] must describe the side ({', '.join(needed)}); "
            "teacher traces need synthetic video records"
        )
    count = int(meta["count"])
    noun = meta["shape"] if count == 1 else f"{meta['shape']}s"
    content = f"{_COUNT_WORDS.get(count, str(count))} {meta['color']} {noun}"
    return _SideFacts(content, bool(meta["matches_prompt"]), str(meta["degradation"]), str(meta["motion"]))


def _rng(seed: int, record_id: str) -> np.random.Generator:
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _distinct_runs(env: VideoPairEnv) -> list[int]:
    """Pool indices whose source frames are distinct in both videos (the first pool index of each source frame),
    so a run of them shows consecutive moments of the clip."""
    size = min(env.pool_sizes)
    picked, seen = [], set()
    for index in range(size):
        key = (int(env.pools[0].indices[index]), int(env.pools[1].indices[index]))
        if key not in seen:
            seen.add(key)
            picked.append(index)
    return picked


def _plan_calls(facts: tuple[_SideFacts, _SideFacts], env: VideoPairEnv, cfg: TeacherConfig,
                rng: np.random.Generator) -> list[list[int]]:
    """Runs of consecutive frames to look at: the middle of the clip first, then other stretches."""
    distinct = _distinct_runs(env)
    length = min(cfg.motion_frames, env.config.max_frames_per_call, len(distinct))
    if length < 2:
        return []
    evident = any(f.motion == "frozen" for f in facts) and not all(f.motion == "frozen" for f in facts)
    wanted = 0 if evident and rng.random() < cfg.skip_evident_share else 1
    if wanted and rng.random() < cfg.second_look_share:
        wanted += 1
        if rng.random() < cfg.third_look_share:
            wanted += 1
    wanted = min(wanted, env.config.max_tool_calls)
    last_start = len(distinct) - length
    # Middle first, then the start and the end of the clip, each jittered a little so traces differ.
    anchors = [last_start // 2, 0, last_start][:wanted]
    calls = []
    for anchor in anchors:
        start = int(np.clip(anchor + rng.integers(-1, 2), 0, last_start))
        calls.append(distinct[start : start + length])
    return calls


def _tool_call_text(frames: Sequence[int]) -> str:
    call = {"name": TOOL_NAME, "arguments": {"target_frames": list(frames)}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def _answer_lines(dimensions: Iterable[str], verdicts: Mapping[str, int]) -> str:
    lines = [f"{dim}: \\boxed{{{verdicts[dim]}}}" for dim in dimensions]
    lines.append(f"{OVERALL_LINE_NAME}: \\boxed{{{verdicts[OVERALL]}}}")
    return "\n".join(lines)


def _frames_text(frames: Sequence[int]) -> str:
    return ", ".join(str(i) for i in frames)


_QUALITY = {"none": "sharp and clean", "noise": "covered in heavy noise", "blur": "blurred"}
_MOTION = {
    "smooth": "move a small, steady step from frame to frame",
    "jitter": "jump back and forth between consecutive frames instead of following a steady path",
    "frozen": "do not move at all",
}
_MOTION_SHORT = {"smooth": "smooth", "jitter": "jittery", "frozen": "frozen"}


def _which(verdict: int) -> str:
    return {1: "Video 1 is better", 2: "Video 2 is better", 0: "tie"}[verdict]


class _Writer:
    """Turn texts for one pair in the configured style."""

    def __init__(self, record: PreferenceRecord, facts: tuple[_SideFacts, _SideFacts], style: str):
        self.record, self.facts, self.style = record, facts, style

    def opening(self, initial: Sequence[int], next_call: Sequence[int] | None) -> str:
        if self.style == "brief":
            return "Look at the motion." if next_call else "Answer."
        a, b = self.facts
        parts = [
            f'The prompt asks for {self.record.prompt}. In the initial frames ({_frames_text(initial)}) '
            f"Video 1 shows {a.content} and Video 2 shows {b.content}.",
            self._alignment(),
            f"Video 1 looks {_QUALITY.get(a.quality, a.quality)} and Video 2 looks {_QUALITY.get(b.quality, b.quality)}.",
        ]
        frozen = [v for v, f in ((1, a), (2, b)) if f.motion == "frozen"]
        if len(frozen) == 1:
            other = 3 - frozen[0]
            parts.append(
                f"The objects of Video {frozen[0]} stay at the same place in every initial frame while those of "
                f"Video {other} change position, so Video {frozen[0]} looks frozen."
            )
        else:
            parts.append("The initial frames are far apart, so they cannot show whether the motion is smooth.")
        if next_call:
            parts.append(f"I will look at the consecutive frames {_frames_text(next_call)} of both videos.")
        return " ".join(parts)

    def _alignment(self) -> str:
        a, b = self.facts
        if a.matches and b.matches:
            return "Both match the prompt."
        if a.matches != b.matches:
            good, bad = (1, 2) if a.matches else (2, 1)
            return f"Video {good} matches the prompt and Video {bad} does not."
        return "Neither matches the prompt."

    def after_call(self, frames: Sequence[int], next_call: Sequence[int] | None) -> str:
        if self.style == "brief":
            return "Look again." if next_call else "Answer."
        a, b = self.facts
        if a.motion == b.motion:
            text = f"In frames {_frames_text(frames)} the objects of both videos {_MOTION.get(a.motion, a.motion)}."
        else:
            text = (
                f"In frames {_frames_text(frames)} the objects of Video 1 {_MOTION.get(a.motion, a.motion)}, "
                f"while those of Video 2 {_MOTION.get(b.motion, b.motion)}."
            )
        if next_call:
            text += f" To confirm, I will check frames {_frames_text(next_call)}."
        return text

    def synthesis(self) -> str:
        a, b = self.facts
        return (
            f"Video 1: {a.content}, {_QUALITY.get(a.quality, a.quality)}, {_MOTION_SHORT.get(a.motion, a.motion)} "
            f"motion. Video 2: {b.content}, {_QUALITY.get(b.quality, b.quality)}, "
            f"{_MOTION_SHORT.get(b.motion, b.motion)} motion."
        )

    def decision(self, dimensions: Sequence[str], verdicts: Mapping[str, int], priority: Sequence[str]) -> str:
        if self.style == "brief":
            return ""
        lines = [f"{DIMENSION_NAMES.get(d, d).capitalize()}: {_which(verdicts[d])}." for d in dimensions]
        overall = verdicts[OVERALL]
        if overall == 0:
            lines.append("No dimension differs, so overall it is a tie.")
        else:
            deciding = next((d for d in priority if d in verdicts and verdicts[d] == overall), None)
            reason = f" on {DIMENSION_NAMES.get(deciding, deciding)}" if deciding else ""
            lines.append(f"Overall Video {overall} wins{reason}.")
        return " ".join(lines)


def _turn(think: str, synthesis: str | None, action: str) -> str:
    text = f"<think>{think}</think>\n"
    if synthesis:
        text += f"<synthesis>{synthesis}</synthesis>\n"
    return text + action


def teacher_trace(
    record: PreferenceRecord,
    env_config: EnvConfig = EnvConfig(),
    config: TeacherConfig = TeacherConfig(),
    dimensions: Sequence[str] | Mapping[str, str] | None = None,
    overall_priority: Sequence[str] = ("TA", "MQ", "VQ"),
) -> tuple[EpisodeTrace, VideoPairEnv]:
    """Teacher trace of a labelled synthetic video pair (Video 1 = side a) and its finished environment.

    dimensions: judged dimensions (default: the label's, without overall, in label order).
    overall_priority: the order in which the data's rule lets a dimension decide ``overall`` (the synthetic
        set's default); used only to phrase the reason of the overall verdict.
    Raises ``ValueError`` naming the record when it is not a video pair with a usable label and meta.
    """
    if record.a.video is None or record.b.video is None:
        raise ValueError(f"record {record.id!r}: teacher traces need a video on both sides")
    facts = (_side_facts(record, "a"), _side_facts(record, "b"))
    dims = normalize_dimensions(
        dimensions if dimensions is not None else [k for k in record.label if k != OVERALL]
    )
    label = {k: record.label[k] for k in [*dims, OVERALL] if k in record.label}
    if set(label) != {*dims, OVERALL}:
        raise ValueError(f"record {record.id!r}: label {record.label} lacks some of {[*dims, OVERALL]}")
    verdicts = verdicts_from_label(label)
    env = VideoPairEnv(record.prompt, record.a.video, record.b.video, dims, env_config)
    env.reset()
    calls = _plan_calls(facts, env, config, _rng(config.seed, record.id))
    writer = _Writer(record, facts, config.style)
    answer = _answer_lines(dims, verdicts)
    turns = []
    first_call = calls[0] if calls else None
    opening = writer.opening(env.initial_indices(1), first_call)
    if first_call is None:
        decision = writer.decision(list(dims), verdicts, overall_priority)
        turns.append(_turn(f"{opening} {decision}".strip(), None, answer))
    else:
        turns.append(_turn(opening, None, _tool_call_text(first_call)))
        for k, frames in enumerate(calls):
            following = calls[k + 1] if k + 1 < len(calls) else None
            think = writer.after_call(frames, following)
            synthesis = writer.synthesis() if config.style == "full" else None
            if following is not None:
                turns.append(_turn(think, synthesis, _tool_call_text(following)))
            else:
                decision = writer.decision(list(dims), verdicts, overall_priority)
                turns.append(_turn(f"{think} {decision}".strip(), synthesis, answer))
    trace = EpisodeTrace(
        id=record.id,
        prompt=record.prompt,
        video_1=Path(record.a.video),
        video_2=Path(record.b.video),
        turns=turns,
        frames=[],
        dimensions=dict(dims),
        label=label,
        env=env_config,
        source=f"teacher:{config.style}",
    )
    for text in turns:
        result = env.step(text)
        if result.info["frames"]:
            trace.frames.append(list(result.info["frames"]))
    # A teacher trace that the environment rejects is a bug in this module, not bad data.
    if any(t.problems for t in env.turns) or env.status != EpisodeStatus.ANSWERED or env.verdicts != verdicts:
        problems = [str(p) for t in env.turns for p in t.problems]
        raise RuntimeError(f"record {record.id!r}: teacher trace rejected ({env.status}, {problems})")
    return trace, env


def teacher_traces(
    records: Iterable[PreferenceRecord],
    env_config: EnvConfig = EnvConfig(),
    config: TeacherConfig = TeacherConfig(),
    dimensions: Sequence[str] | Mapping[str, str] | None = None,
    overall_priority: Sequence[str] = ("TA", "MQ", "VQ"),
) -> list[EpisodeTrace]:
    """Teacher traces of many records (see :func:`teacher_trace`)."""
    return [teacher_trace(r, env_config, config, dimensions, overall_priority)[0] for r in records]


# ------------------------------------------------------------------------------------------------- JSONL I/O


class TraceSet(Sequence[EpisodeTrace]):
    """Traces read from one JSONL file; ``skipped`` holds the errors of the lines left out."""

    def __init__(self, traces: list[EpisodeTrace], path: Path | None = None, skipped: list[TraceError] | None = None):
        self.traces = traces
        self.path = path
        self.skipped = skipped if skipped is not None else []

    @overload
    def __getitem__(self, i: int) -> EpisodeTrace: ...
    @overload
    def __getitem__(self, i: slice) -> list[EpisodeTrace]: ...
    def __getitem__(self, i):
        return self.traces[i]

    def __len__(self) -> int:
        return len(self.traces)

    def __iter__(self) -> Iterator[EpisodeTrace]:
        return iter(self.traces)

    def __repr__(self) -> str:
        return f"TraceSet({len(self.traces)} traces, {len(self.skipped)} skipped, path={self.path})"


def _assistant_text(message: Mapping[str, Any], number: int) -> str:
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"conversation[{number}]: assistant content parts must all be text parts")
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"conversation[{number}]: assistant content must be a string or a list of text parts")
    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return content
    if not isinstance(tool_calls, list) or len(tool_calls) != 1 or not isinstance(tool_calls[0], dict):
        raise ValueError(f"conversation[{number}]: tool_calls must be a list with exactly one call")
    call = tool_calls[0].get("function", tool_calls[0])
    if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
        raise ValueError(f"conversation[{number}]: a tool call needs 'name' and 'arguments'")
    arguments = call["arguments"]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            raise ValueError(f"conversation[{number}]: tool call arguments are not valid JSON ({err.msg})") from err
    text = json.dumps({"name": call["name"], "arguments": arguments})
    return f"{content.rstrip()}\n<tool_call>\n{text}\n</tool_call>"


def _parse_conversation(raw: Any) -> tuple[list[str], list[list[int]]]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("conversation must be a non-empty list of messages")
    turns: list[str] = []
    frames: list[list[int]] = []
    for number, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ("assistant", "tool"):
            raise ValueError(f"conversation[{number}]: expected an object with role 'assistant' or 'tool'")
        if message["role"] == "assistant":
            turns.append(_assistant_text(message, number))
            continue
        shown = message.get("frames")
        if not isinstance(shown, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in shown):
            raise ValueError(f"conversation[{number}]: a tool message needs 'frames', a list of integers")
        if number == 0 or raw[number - 1].get("role") != "assistant":
            raise ValueError(f"conversation[{number}]: a tool result must follow an assistant tool call")
        frames.append(list(shown))
    if raw[-1].get("role") != "assistant":
        raise ValueError("conversation must end with the assistant's answer")
    return turns, frames


def _resolve(value: Any, root: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty path string, got {value!r}")
    path = Path(value)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    return path


def _env_config(raw: Any, base: EnvConfig) -> EnvConfig:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ValueError("env must be an object of EnvConfig fields")
    unknown = set(raw) - _ENV_FIELDS
    if unknown:
        raise ValueError(f"env has unknown field(s) {sorted(unknown)}; allowed: {sorted(_ENV_FIELDS)}")
    return EnvConfig(**{**asdict(base), **raw})


def parse_trace(raw: Any, root: Path, env_config: EnvConfig = EnvConfig()) -> EpisodeTrace:
    """One JSONL object -> :class:`EpisodeTrace` (not replayed). Relative video paths resolve against ``root``."""
    if not isinstance(raw, dict):
        raise ValueError(f"a trace must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("id", "prompt", "video_1", "video_2", "conversation") if k not in raw]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = set(raw) - _TRACE_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_TRACE_FIELDS)}")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise ValueError(f"id must be a non-empty string, got {raw['id']!r}")
    if not isinstance(raw["prompt"], str):
        raise ValueError("prompt must be a string")
    label = raw.get("label")
    if label is not None:
        if not isinstance(label, dict) or OVERALL not in label:
            raise ValueError(f"label must be an object with {OVERALL!r}")
        verdicts_from_label(label)  # raises on unknown values
    dims_raw = raw.get("dimensions")
    if dims_raw is None:
        dims_raw = [k for k in label if k != OVERALL] if label is not None else DEFAULT_DIMENSIONS
    dimensions = normalize_dimensions(dims_raw)
    if label is not None and set(label) != {*dimensions, OVERALL}:
        raise ValueError(f"label keys {sorted(label)} differ from the dimensions {sorted(dimensions)} + overall")
    turns, frames = _parse_conversation(raw["conversation"])
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise ValueError("source must be a string")
    return EpisodeTrace(
        id=raw["id"],
        prompt=raw["prompt"],
        video_1=_resolve(raw["video_1"], root, "video_1"),
        video_2=_resolve(raw["video_2"], root, "video_2"),
        turns=turns,
        frames=frames,
        dimensions=dimensions,
        label=dict(label) if label is not None else None,
        env=_env_config(raw.get("env"), env_config),
        source=source,
    )


def read_traces(
    path: str | Path,
    env_config: EnvConfig = EnvConfig(),
    skip_invalid: bool = False,
    require_correct: bool = False,
    validate: bool = True,
) -> TraceSet:
    """Read a trace JSONL file (teacher output or a stronger judge's conversations).

    Every line is parsed and, with ``validate``, replayed through the environment (videos decoded) so that only
    clean episodes come back. ``env_config`` supplies the settings a line's ``env`` does not override.
    ``require_correct`` also rejects traces whose verdicts disagree with their label. A bad line raises
    :class:`TraceError` naming ``file:line`` and the id; with ``skip_invalid`` it is left out and its error kept
    in ``TraceSet.skipped``. Ids must be unique.
    """
    path = Path(path)
    root = path.parent.resolve()
    traces: list[EpisodeTrace] = []
    skipped: list[TraceError] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            trace_id = None
            try:
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ValueError(f"malformed JSON: {err}") from err
                if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    trace_id = raw["id"]
                trace = parse_trace(raw, root, env_config)
                if trace.id in first_line:
                    raise ValueError(f"duplicate id (first seen on line {first_line[trace.id]})")
                if validate:
                    replay(trace, require_correct=require_correct)
            except (ValueError, MediaError) as err:
                error = TraceError(str(err), path, lineno, trace_id)
                if not skip_invalid:
                    raise error from err
                skipped.append(error)
                continue
            first_line[trace.id] = lineno
            traces.append(trace)
    return TraceSet(traces, path=path, skipped=skipped)


def trace_to_dict(trace: EpisodeTrace, root: Path) -> dict[str, Any]:
    """JSONL object of a clean trace (tool calls, then the answer); video paths relative to ``root``."""
    if len(trace.frames) != len(trace.turns) - 1:
        raise ValueError(f"trace {trace.id!r}: {len(trace.turns)} turns need {len(trace.turns) - 1} tool results")
    conversation: list[dict[str, Any]] = []
    for text, shown in zip(trace.turns, [*trace.frames, None]):
        conversation.append({"role": "assistant", "content": text})
        if shown is not None:
            conversation.append({"role": "tool", "frames": list(shown)})
    return {
        "id": trace.id,
        "prompt": trace.prompt,
        "video_1": Path(os.path.relpath(Path(trace.video_1).resolve(), root)).as_posix(),
        "video_2": Path(os.path.relpath(Path(trace.video_2).resolve(), root)).as_posix(),
        "dimensions": trace.dimensions,
        "label": trace.label,
        "env": asdict(trace.env),
        "source": trace.source,
        "conversation": conversation,
    }


def write_traces(path: str | Path, traces: Iterable[EpisodeTrace]) -> Path:
    """Write traces as JSONL (video paths relative to the file's folder; they may point outside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    lines = [json.dumps(trace_to_dict(t, root), ensure_ascii=False) for t in traces]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
