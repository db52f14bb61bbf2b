"""Cold-start traces for VR-Thinker SFT in a preset's protocol: written by a teacher from known ground truth, or
imported.

A trace is one recorded judging episode: the prompt, the two videos, the protocol preset, the assistant turns in
order and the frame numbers each tool call showed. Replaying it through :class:`~vr_thinker.env.VideoPairEnv`
rebuilds the exact conversation (frames, tool replies, memory window), so a trace file stays small and every trace
is checked to be a valid episode: every turn is well-formed, every tool call shows the recorded frames, and the
episode ends with a final answer.

Sources:
- :func:`teacher_trace` writes a trace for a labelled synthetic video pair from its label and ``meta`` (what each
  side draws, its degradation, its motion): the first turn describes the initial frames, tool calls look at runs of
  consecutive frames of both videos (where jitter or a frozen clip shows), each non-final turn states a recommended
  answer with a confidence, and the final answer states the labelled verdicts. 0-3 tool calls per trace, chosen
  per pair by a seeded generator.
- :func:`read_traces` imports traces produced by a stronger judge (same JSONL format; see below) and validates
  every line by replaying it; a bad line raises :class:`TraceError` naming ``file:line``.

Trace JSONL, one object per line::

    {"id": "pair-1", "prompt": "two red circles",
     "video_1": "videos/a.mp4", "video_2": "videos/b.mp4",      # relative to the JSONL's folder, or absolute
     "preset": "vr-thinker", "preset_overrides": ["frames.per_video=8"],     # optional (default: vr-thinker)
     "dimensions": "videogen",                                 # optional: a dimension set of the preset
     "label": {"VQ": "a", "MQ": "tie", "TA": "a", "overall": "a"},   # optional; "a" = Video 1
     "seed": 0,                                                # optional: the episode's tool seed
     "source": "teacher",                                      # optional free text
     "conversation": [
        {"role": "assistant", "content": "<synthesis>...</synthesis><think>...</think><recommend answer>...
                                          </recommend answer><tool_call>{...}</tool_call>"},
        {"role": "tool", "frames": [3, 4, 11, 12]},            # frame numbers shown (1-based, both videos)
        {"role": "assistant", "content": "<synthesis>...</synthesis><think>...</think><final answer>TA=1, VQ=1,
                                          MQ=0, OA=1</final answer>"}]}

An assistant turn may instead carry its call in the OpenAI form, ``"tool_calls": [{"function": {"name":
"select_frames", "arguments": {"target_frames": [...]}}}]``; it is turned into the protocol's ``<tool_call>`` text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from mmreward.data.media import MediaError
from mmreward.data.records import PreferenceRecord
from mmreward.errors import MmrewardError
from vr_thinker.env import EpisodeStatus, VideoPairEnv
from vr_thinker.presets import DimensionSpec, PresetError, ProtocolPreset, load_preset
from vr_thinker.protocol import OVERALL, TOOL_NAME, label_verdicts

DIMENSION_NAMES = {"VQ": "visual quality", "MQ": "motion quality", "TA": "text alignment"}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_TRACE_FIELDS = {"id", "prompt", "video_1", "video_2", "preset", "preset_overrides", "dimensions", "label", "seed",
                 "source", "conversation"}


class TraceError(MmrewardError, ValueError):
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
    """One recorded episode. ``turns``: assistant texts in order; ``frames``: per tool call, the frame numbers
    (1-based) it showed (empty for a call answered with a notice or an error); ``label``: record label or None;
    ``dimensions``: the judged dimensions (None: the preset's default set; (): the overall verdict only); ``seed``: the
    episode's tool seed."""

    id: str
    prompt: str
    video_1: Path
    video_2: Path
    turns: list[str]
    frames: list[list[int]]
    preset: ProtocolPreset = field(default_factory=load_preset)
    dimensions: tuple[DimensionSpec, ...] | None = None
    label: dict[str, str] | None = None
    seed: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        # None: the preset's default set; () judges the overall verdict only.
        self.dimensions = tuple(self.preset.dimensions()) if self.dimensions is None else tuple(self.dimensions)

    @property
    def num_tool_calls(self) -> int:
        return len(self.turns) - 1

    def make_env(self) -> VideoPairEnv:
        return VideoPairEnv(self.prompt, self.video_1, self.video_2, self.preset, self.dimensions, seed=self.seed)


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
        frames=[[i + 1 for i in t.frames] for t in env.turns if t.tool is not None],
        preset=env.preset,
        dimensions=env.dimensions,
        label=dict(label) if label is not None else None,
        seed=env.seed,
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
        problems = env.turns[-1].check.problems
        if problems:
            raise ValueError(f"turn {number} is not well-formed ({result.status.value}): " + "; ".join(map(str, problems)))
        if env.turns[-1].tool is not None:
            expected = next(calls, None)
            if expected is None:
                raise ValueError(f"turn {number} called {TOOL_NAME} but the trace records no frames for the call")
            if result.info["frames"] != list(expected):
                raise ValueError(
                    f"turn {number}: the environment showed frames {result.info['frames']} but the trace records "
                    f"{list(expected)} (other preset settings or seed?)"
                )
        elif result.status not in (EpisodeStatus.RUNNING, EpisodeStatus.ANSWERED):
            raise ValueError(f"turn {number} ended the episode with status {result.status.value}")
    if not env.done:
        raise ValueError(f"the trace ends after {len(trace.turns)} turns without a final answer")
    if next(calls, None) is not None:
        raise ValueError(f"the trace records {len(trace.frames)} tool results but made {env.num_tool_calls} calls")
    if require_correct:
        if trace.label is None:
            raise ValueError("require_correct needs a label")
        wanted = label_verdicts(trace.label, env.preset, env.dimensions)
        wrong = [k for k, v in wanted.items() if env.verdicts.get(k) != v]
        if wrong:
            raise ValueError(f"verdicts {env.verdicts} disagree with the label on {wrong}")
    return env


# ---------------------------------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TeacherConfig:
    """How teacher traces are written.

    style: "full" writes a synthesis and reasoning that describe what each video shows; "brief" writes short fixed
        phrases with the same actions and verdicts (a tiny test model learns the format from it in a few steps).
    motion_frames: consecutive pool frames of each video per tool call (capped by half the per-call limit).
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


def _distinct_positions(env: VideoPairEnv) -> list[int]:
    """Pool positions whose source frames are distinct in both videos (the first position of each source frame),
    so a run of them shows consecutive moments of the clips."""
    picked, seen = [], set()
    for position in range(env.preset.frames.per_video):
        key = (int(env.pools[0].indices[position]), int(env.pools[1].indices[position]))
        if key not in seen:
            seen.add(key)
            picked.append(position)
    return picked


def _plan_calls(facts: tuple[_SideFacts, _SideFacts], env: VideoPairEnv, cfg: TeacherConfig,
                rng: np.random.Generator) -> list[list[int]]:
    """Frame numbers of each call: a run of consecutive positions of Video 1 and the same positions of Video 2,
    the middle of the clips first, then other stretches."""
    distinct = _distinct_positions(env)
    length = min(cfg.motion_frames, env.preset.frames.max_per_call // 2, len(distinct))
    if length < 2:
        return []
    evident = any(f.motion == "frozen" for f in facts) and not all(f.motion == "frozen" for f in facts)
    wanted = 0 if evident and rng.random() < cfg.skip_evident_share else 1
    if wanted and rng.random() < cfg.second_look_share:
        wanted += 1
        if rng.random() < cfg.third_look_share:
            wanted += 1
    wanted = min(wanted, env.preset.limits.max_tool_calls, env.preset.limits.max_turns - 1)
    last_start = len(distinct) - length
    per_video = env.preset.frames.per_video
    # Middle first, then the start and the end of the clip, each jittered a little so traces differ.
    anchors = [last_start // 2, 0, last_start][:wanted]
    calls = []
    for anchor in anchors:
        start = int(np.clip(anchor + rng.integers(-1, 2), 0, last_start))
        run = distinct[start : start + length]
        calls.append([p + 1 for p in run] + [per_video + p + 1 for p in run])
    return calls


def _tool_call_text(numbers: Sequence[int]) -> str:
    call = {"name": TOOL_NAME, "arguments": {"target_frames": list(numbers)}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def _answer_text(verdicts: Mapping[str, int], keys: Sequence[str], confidence: tuple[str, int] | None = None) -> str:
    pairs = [f"{k}={verdicts[k]}" for k in keys]
    if confidence is not None:
        pairs.append(f"{confidence[0]}={confidence[1]}")
    return ", ".join(pairs)


def _numbers_text(numbers: Sequence[int]) -> str:
    return ", ".join(str(i) for i in numbers)


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

    def synthesis(self, seen_motion: bool) -> str:
        if self.style == "brief":
            return "Seen."
        a, b = self.facts
        motion = ""
        if seen_motion:
            motion = (f" Video 1 motion: {_MOTION_SHORT.get(a.motion, a.motion)}; Video 2 motion: "
                      f"{_MOTION_SHORT.get(b.motion, b.motion)}.")
        return (f"Video 1 shows {a.content}, {_QUALITY.get(a.quality, a.quality)}. Video 2 shows {b.content}, "
                f"{_QUALITY.get(b.quality, b.quality)}.{motion}")

    def opening(self, initial: Sequence[int], next_call: Sequence[int] | None) -> str:
        if self.style == "brief":
            return "Look at the motion." if next_call else "Answer."
        a, b = self.facts
        parts = [f"The prompt asks for {self.record.prompt}. The initial frames are {_numbers_text(initial)}.",
                 self._alignment()]
        frozen = [v for v, f in ((1, a), (2, b)) if f.motion == "frozen"]
        if len(frozen) == 1:
            parts.append(f"The objects of Video {frozen[0]} stay at the same place in every initial frame while "
                         f"those of Video {3 - frozen[0]} change position, so Video {frozen[0]} looks frozen.")
        else:
            parts.append("The initial frames are far apart, so they cannot show whether the motion is smooth.")
        if next_call:
            parts.append(f"I will select frames {_numbers_text(next_call)} to compare consecutive moments.")
        return " ".join(parts)

    def _alignment(self) -> str:
        a, b = self.facts
        if a.matches and b.matches:
            return "Both match the prompt."
        if a.matches != b.matches:
            good, bad = (1, 2) if a.matches else (2, 1)
            return f"Video {good} matches the prompt and Video {bad} does not."
        return "Neither matches the prompt."

    def after_call(self, numbers: Sequence[int], next_call: Sequence[int] | None) -> str:
        if self.style == "brief":
            return "Look again." if next_call else "Answer."
        a, b = self.facts
        if a.motion == b.motion:
            text = f"In frames {_numbers_text(numbers)} the objects of both videos {_MOTION.get(a.motion, a.motion)}."
        else:
            text = (f"In frames {_numbers_text(numbers)} the objects of Video 1 {_MOTION.get(a.motion, a.motion)}, "
                    f"while those of Video 2 {_MOTION.get(b.motion, b.motion)}.")
        if next_call:
            text += f" To confirm, I will select frames {_numbers_text(next_call)}."
        return text

    def decision(self, dimensions: Sequence[DimensionSpec], verdicts: Mapping[str, int], overall_key: str,
                 priority: Sequence[str]) -> str:
        if self.style == "brief":
            return ""
        lines = [f"{DIMENSION_NAMES.get(d.key, d.name).capitalize()}: {_which(verdicts[d.key])}." for d in dimensions]
        overall = verdicts[overall_key]
        if overall == 0:
            lines.append("No dimension differs, so overall it is a tie.")
        else:
            deciding = next((k for k in priority if k in verdicts and verdicts[k] == overall), None)
            reason = f" on {DIMENSION_NAMES.get(deciding, deciding)}" if deciding else ""
            lines.append(f"Overall Video {overall} wins{reason}.")
        return " ".join(lines)


def _turn(preset: ProtocolPreset, synthesis: str, think: str, recommend: str | None, action: str) -> str:
    tags = preset.answer
    text = f"<{tags.synthesis_tag}>{synthesis}</{tags.synthesis_tag}>\n<{tags.think_tag}>{think}</{tags.think_tag}>\n"
    if recommend is not None:
        text += f"<{tags.recommend_tag}>{recommend}</{tags.recommend_tag}>\n"
    return text + action


def teacher_trace(
    record: PreferenceRecord,
    preset: ProtocolPreset,
    config: TeacherConfig = TeacherConfig(),
    dimensions: Sequence[DimensionSpec] | None = None,
    overall_priority: Sequence[str] = ("TA", "MQ", "VQ"),
) -> tuple[EpisodeTrace, VideoPairEnv]:
    """Teacher trace of a labelled synthetic video pair (Video 1 = side a) under ``preset`` and its finished
    environment.

    dimensions: judged dimensions (default: the preset's default set; their label keys must be in the label).
    overall_priority: the answer keys in the order in which the data's rule lets a dimension decide the overall
        verdict (the synthetic set's default); used only to phrase the reason of the overall verdict.
    A recommended answer (before the last look) marks motion quality a tie with low confidence until the motion
    was seen. Raises ``ValueError`` naming the record when it is not a video pair with a usable label and meta.
    """
    if record.a.video is None or record.b.video is None:
        raise ValueError(f"record {record.id!r}: teacher traces need a video on both sides")
    facts = (_side_facts(record, "a"), _side_facts(record, "b"))
    dims = tuple(dimensions) if dimensions is not None else tuple(preset.dimensions())
    missing = [d.label for d in dims if d.label not in record.label] + ([OVERALL] if OVERALL not in record.label else [])
    if missing:
        raise ValueError(f"record {record.id!r}: label {record.label} lacks {missing}")
    label = {k: record.label[k] for k in [*(d.label for d in dims), OVERALL]}
    verdicts = label_verdicts(label, preset, dims)
    keys = [*(d.key for d in dims), preset.answer.overall_key]
    seed = int(_rng(config.seed, record.id).integers(2**31))
    env = VideoPairEnv(record.prompt, record.a.video, record.b.video, preset, dims, seed=seed)
    env.reset()
    calls = _plan_calls(facts, env, config, _rng(config.seed, record.id))
    writer = _Writer(record, facts, config.style)
    final = f"<{preset.answer.final_tag}>{_answer_text(verdicts, keys)}</{preset.answer.final_tag}>"
    confidence_key = preset.answer.confidence_key
    turns = []
    initial = [i + 1 for i in env.initial_indices()]
    first_call = calls[0] if calls else None
    opening = writer.opening(initial, first_call)
    decision = writer.decision(dims, verdicts, preset.answer.overall_key, overall_priority)
    if first_call is None:
        turns.append(_turn(preset, writer.synthesis(False), f"{opening} {decision}".strip(), None, final))
    else:
        early = {**verdicts, "MQ": 0} if "MQ" in verdicts else dict(verdicts)
        recommend = _answer_text(early, keys, (confidence_key, 3 if early != verdicts else 2))
        turns.append(_turn(preset, writer.synthesis(False), opening, recommend, _tool_call_text(first_call)))
        for k, numbers in enumerate(calls):
            following = calls[k + 1] if k + 1 < len(calls) else None
            think = writer.after_call(numbers, following)
            if following is not None:
                recommend = _answer_text(verdicts, keys, (confidence_key, 2))
                turns.append(_turn(preset, writer.synthesis(True), think, recommend, _tool_call_text(following)))
            else:
                turns.append(_turn(preset, writer.synthesis(True), f"{think} {decision}".strip(), None, final))
    trace = EpisodeTrace(
        id=record.id,
        prompt=record.prompt,
        video_1=Path(record.a.video),
        video_2=Path(record.b.video),
        turns=turns,
        frames=[],
        preset=preset,
        dimensions=dims,
        label=label,
        seed=seed,
        source=f"teacher:{config.style}",
    )
    for text in turns:
        result = env.step(text)
        if env.turns[-1].tool is not None:
            trace.frames.append(list(result.info["frames"]))
    # A teacher trace that the environment rejects is a bug in this module, not bad data.
    if any(t.check.problems for t in env.turns) or env.status != EpisodeStatus.ANSWERED or env.verdicts != verdicts:
        problems = [str(p) for t in env.turns for p in t.check.problems]
        raise RuntimeError(f"record {record.id!r}: teacher trace rejected ({env.status}, {problems})")
    return trace, env


def teacher_traces(
    records: Iterable[PreferenceRecord],
    preset: ProtocolPreset,
    config: TeacherConfig = TeacherConfig(),
    dimensions: Sequence[DimensionSpec] | None = None,
    overall_priority: Sequence[str] = ("TA", "MQ", "VQ"),
) -> list[EpisodeTrace]:
    """Teacher traces of many records (see :func:`teacher_trace`)."""
    return [teacher_trace(r, preset, config, dimensions, overall_priority)[0] for r in records]


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


def _preset(raw: Mapping[str, Any], default: ProtocolPreset) -> ProtocolPreset:
    """The preset a trace line names (with its overrides), or ``default`` when it names none."""
    name, overrides = raw.get("preset"), raw.get("preset_overrides") or []
    if name is None and not overrides:
        return default
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError("preset_overrides must be a list of key=value strings")
    if isinstance(name, dict):
        return ProtocolPreset.from_dict(name, where="trace preset")
    if name is not None and not isinstance(name, str):
        raise ValueError("preset must be a preset name or file")
    try:
        return load_preset(name or default.name, overrides)
    except PresetError as err:
        raise ValueError(str(err)) from err


def _dimensions(raw: Any, preset: ProtocolPreset) -> tuple[DimensionSpec, ...]:
    if raw is None or isinstance(raw, str):
        try:
            return tuple(preset.dimensions(raw))
        except PresetError as err:
            raise ValueError(str(err)) from err
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise ValueError("dimensions must be a dimension set name or a list of {key, label, name, description}")
    try:
        return tuple(DimensionSpec(**d) for d in raw)
    except TypeError as err:
        raise ValueError(f"dimensions: {err}") from err


def parse_trace(raw: Any, root: Path, preset: ProtocolPreset | None = None) -> EpisodeTrace:
    """One JSONL object -> :class:`EpisodeTrace` (not replayed). Relative video paths resolve against ``root``;
    ``preset`` is used when the line names none (default: vr-thinker)."""
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
    chosen = _preset(raw, preset if preset is not None else load_preset())
    dimensions = _dimensions(raw.get("dimensions"), chosen)
    label = raw.get("label")
    if label is not None:
        if not isinstance(label, dict) or OVERALL not in label:
            raise ValueError(f"label must be an object with {OVERALL!r}")
        label_verdicts(label, chosen, dimensions)  # raises on unknown values
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("seed must be an integer")
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
        preset=chosen,
        dimensions=dimensions,
        label=dict(label) if label is not None else None,
        seed=seed,
        source=source,
    )


def read_traces(
    path: str | Path,
    preset: ProtocolPreset | None = None,
    skip_invalid: bool = False,
    require_correct: bool = False,
    validate: bool = True,
) -> TraceSet:
    """Read a trace JSONL file (teacher output or a stronger judge's conversations).

    Every line is parsed and, with ``validate``, replayed through the environment (videos decoded) so that only
    clean episodes come back. ``preset`` is the protocol of lines that name none. ``require_correct`` also rejects
    traces whose verdicts disagree with their label. A bad line raises :class:`TraceError` naming ``file:line``
    and the id; with ``skip_invalid`` it is left out and its error kept in ``TraceSet.skipped``. Ids must be unique.
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
                trace = parse_trace(raw, root, preset)
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
    """JSONL object of a clean trace (tool calls, then the answer); video paths relative to ``root``. A call
    answered with a notice or an error is written as a tool message with no frames."""
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
        **_preset_fields(trace.preset),
        "dimensions": [asdict(d) for d in trace.dimensions],
        "label": trace.label,
        "seed": trace.seed,
        "source": trace.source,
        "conversation": conversation,
    }


def _preset_fields(preset: ProtocolPreset) -> dict[str, Any]:
    """How a trace line names its preset: the name and overrides when they rebuild it, else the whole preset."""
    try:
        if load_preset(preset.name, list(preset.overrides)).to_dict() == preset.to_dict():
            return {"preset": preset.name, "preset_overrides": list(preset.overrides)}
    except PresetError:
        pass
    return {"preset": preset.to_dict()}


def write_traces(path: str | Path, traces: Iterable[EpisodeTrace]) -> Path:
    """Write traces as JSONL (video paths relative to the file's folder; they may point outside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    lines = [json.dumps(trace_to_dict(t, root), ensure_ascii=False) for t in traces]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
