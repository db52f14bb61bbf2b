"""Tool environment of the VR-Thinker judge: frame pools of two videos, the ``select_frames`` tool, the memory
window and the budgets.

Episode: ``reset()`` returns the first context (system + first user turn with the initial frames). Each
``step(text)`` takes one generated assistant turn and returns a :class:`StepResult`; while not done the next
context is ``env.messages()`` (not just the old context + observation: the memory window may have replaced older
tool images with text placeholders).

Frame addressing: each video is sampled into a frame pool (count-based by default, so both pools have the same
length and index i is the same relative moment in both). ``target_frames`` are pool indices, valid in
``[0, max(len(pool1), len(pool2)))``; one call shows each chosen index of both videos (a video whose pool is
shorter is noted as lacking that frame). Duplicates are dropped (noted); more than ``max_frames_per_call``
distinct indices, or any index out of range, rejects the call.

Outcomes of a turn (``StepResult.status``):
- ``running``: a valid tool call; the observation is a tool turn with the frames.
- ``invalid_turn``: unusable turn that is not an answer (broken tool call, no think block, no action, ...); the
  observation names the problems and the model may retry. A broken tool call does not count as a call.
- ``answered`` / ``invalid_answer`` (done): the turn was an answer attempt; its readable verdicts are final.
- ``truncated`` (done): the output was cut (token limit or an unclosed tag).
- ``tool_budget_exceeded`` (done): a well-formed call beyond ``max_tool_calls`` (it counts as a call).
- ``turn_limit`` (done): ``max_turns`` assistant turns without an answer.
- ``context_exceeded`` (done): the next context would exceed ``max_context_tokens``.
Model output never raises; misuse of the API (step after done, bad config) does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmreward.data.media import VideoClip, get_frame_pool
from vr_thinker.protocol import (
    DEFAULT_DIMENSIONS,
    DimensionsLike,
    Frame,
    ParsedTurn,
    Problem,
    ProblemCode,
    build_assistant_message,
    build_feedback_message,
    build_first_user_message,
    build_frames_message,
    build_system_prompt,
    image_placeholder,
    normalize_dimensions,
    parse_assistant_turn,
    select_frames_tool,
    system_message,
)
from vr_thinker.rewards import TraceOutcome

Message = dict[str, Any]
TokenCounter = Callable[[list[Message]], int]


@dataclass(frozen=True)
class EnvConfig:
    """Settings of one judging episode.

    pool_frames: frames sampled uniformly over each video into its pool (the indices the tool addresses).
    pool_fps: sample the pool at this rate instead (then set ``pool_frames=None``); pools may differ in length.
    initial_frames: frames per video shown in the first user turn, spread evenly over the pool.
    max_frames_per_call: distinct indices allowed in one ``select_frames`` call.
    max_tool_calls: tool calls allowed; one more well-formed call ends the episode.
    memory_window: tool turns whose images stay in the context (older ones become text placeholders);
        None keeps all. The first user turn's frames always stay.
    max_turns: assistant turns allowed in total (tool calls, retries and the answer).
    max_context_tokens: longest context (as counted by the env's token counter) the model may be given.
    system_prompt: overrides the default system prompt built from the budgets.
    """

    pool_frames: int | None = 32
    pool_fps: float | None = None
    initial_frames: int = 4
    max_frames_per_call: int = 8
    max_tool_calls: int = 3
    memory_window: int | None = 1
    max_turns: int = 5
    max_context_tokens: int | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if (self.pool_frames is None) == (self.pool_fps is None):
            raise ValueError("set exactly one of pool_frames and pool_fps")
        for name in ("initial_frames", "max_frames_per_call", "max_turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tool_calls < 0 or (self.memory_window is not None and self.memory_window < 0):
            raise ValueError("max_tool_calls and memory_window must be >= 0")


class EpisodeStatus(str, Enum):
    RUNNING = "running"
    INVALID_TURN = "invalid_turn"
    ANSWERED = "answered"
    INVALID_ANSWER = "invalid_answer"
    TRUNCATED = "truncated"
    TOOL_BUDGET_EXCEEDED = "tool_budget_exceeded"
    TURN_LIMIT = "turn_limit"
    CONTEXT_EXCEEDED = "context_exceeded"

    @property
    def done(self) -> bool:
        return self not in (EpisodeStatus.RUNNING, EpisodeStatus.INVALID_TURN)


@dataclass
class TurnRecord:
    """One assistant turn: its text, the parse, every problem (parser and environment) and the frames shown."""

    text: str
    parsed: ParsedTurn
    problems: list[Problem]
    status: EpisodeStatus
    frames: list[int] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass
class StepResult:
    """observation: the message appended to the context (None when done). info: turn, problems (codes),
    num_tool_calls, frames (pool indices shown), verdicts (final ones once done)."""

    observation: Message | None
    done: bool
    status: EpisodeStatus
    info: dict[str, Any]


def processor_token_counter(processor: Any, tools: Sequence[dict] | None = None) -> TokenCounter:
    """Count a context's tokens exactly as the model would see it (chat template + image tokens)."""
    tools = list(tools) if tools is not None else [select_frames_tool()]

    def count(messages: list[Message]) -> int:
        out = processor.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(out["input_ids"][0])

    return count


class VideoPairEnv:
    """Judging episode for one (prompt, Video 1, Video 2) pair. Videos are paths (decoded through the cached
    frame pool) or already sampled :class:`VideoClip` pools."""

    def __init__(
        self,
        prompt: str,
        video_1: str | Path | VideoClip,
        video_2: str | Path | VideoClip,
        dimensions: DimensionsLike = DEFAULT_DIMENSIONS,
        config: EnvConfig = EnvConfig(),
        token_counter: TokenCounter | None = None,
    ):
        if config.max_context_tokens is not None and token_counter is None:
            raise ValueError("max_context_tokens needs a token_counter (e.g. processor_token_counter(processor))")
        self.prompt = prompt
        self.dimensions = normalize_dimensions(dimensions)
        self.config = config
        self.token_counter = token_counter
        self.pools = (self._pool(video_1), self._pool(video_2))
        self.tools = [select_frames_tool(config.max_frames_per_call)]
        self._images: dict[tuple[int, int], Image.Image] = {}
        self._history: list[Message] = []
        self._frame_turns: list[int] = []  # positions in _history of tool turns that carry frames
        self.turns: list[TurnRecord] = []
        self.num_tool_calls = 0
        self.verdicts: dict[str, int] = {}
        self.status: EpisodeStatus | None = None

    def _pool(self, video: str | Path | VideoClip) -> VideoClip:
        clip = video if isinstance(video, VideoClip) else get_frame_pool(
            video, fps=self.config.pool_fps, num_frames=self.config.pool_frames
        )
        if len(clip.frames) == 0:
            raise ValueError(f"{'in-memory clip' if isinstance(video, VideoClip) else video}: empty frame pool")
        return clip

    # ------------------------------------------------------------------------------------------------- context

    @property
    def pool_sizes(self) -> tuple[int, int]:
        return len(self.pools[0].frames), len(self.pools[1].frames)

    @property
    def done(self) -> bool:
        return self.status is not None and self.status.done

    def frame(self, video: int, index: int) -> Frame:
        pool = self.pools[video - 1]
        key = (video, index)
        if key not in self._images:  # one PIL image per frame, so repeated renders share the object
            self._images[key] = Image.fromarray(np.asarray(pool.frames[index]))
        return Frame(video, index, self._images[key], float(pool.timestamps[index]))

    def initial_indices(self, video: int) -> list[int]:
        size = self.pool_sizes[video - 1]
        count = min(self.config.initial_frames, size)
        return sorted({int(i) for i in np.rint(np.linspace(0, size - 1, count))})

    def reset(self) -> list[Message]:
        system = self.config.system_prompt or build_system_prompt(
            self.config.max_tool_calls, self.config.max_frames_per_call
        )
        frames = [self.frame(v, i) for v in (1, 2) for i in self.initial_indices(v)]
        self._history = [
            system_message(system),
            build_first_user_message(self.prompt, self.dimensions, frames, self.pool_sizes),
        ]
        self._frame_turns, self.turns, self.num_tool_calls, self.verdicts = [], [], 0, {}
        self.status = EpisodeStatus.RUNNING
        if self._over_context():
            raise ValueError(
                f"the first turn alone exceeds max_context_tokens={self.config.max_context_tokens}; "
                "lower initial_frames or raise the limit"
            )
        return self.messages()

    def messages(self, before_turn: int | None = None) -> list[Message]:
        """The context with the memory window applied: now, or as the model saw it before assistant turn
        ``before_turn`` (0-based), which is what a per-turn training row needs."""
        history = self._history
        if before_turn is not None:
            positions = [i for i, m in enumerate(history) if m["role"] == "assistant"]
            if not 0 <= before_turn <= len(positions):
                raise IndexError(f"before_turn={before_turn}, episode has {len(positions)} assistant turns")
            history = history[: positions[before_turn]] if before_turn < len(positions) else history
        frame_turns = [i for i in self._frame_turns if i < len(history)]
        window = self.config.memory_window
        dropped = set(frame_turns if window == 0 else frame_turns[:-window] if window is not None else [])
        return [self._without_images(m) if i in dropped else m for i, m in enumerate(history)]

    @staticmethod
    def _without_images(message: Message) -> Message:
        content = [image_placeholder() if part["type"] == "image" else part for part in message["content"]]
        return {**message, "content": content}

    def _over_context(self) -> bool:
        limit = self.config.max_context_tokens
        return limit is not None and self.token_counter(self.messages()) > limit  # type: ignore[misc]

    # ----------------------------------------------------------------------------------------------------- step

    def step(self, assistant_text: str, truncated: bool = False) -> StepResult:
        """Apply one assistant turn. ``truncated``: generation stopped at its token limit."""
        if self.status is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            raise RuntimeError(f"the episode is over (status {self.status.value}); call reset()")
        parsed = parse_assistant_turn(assistant_text, self.dimensions, truncated=truncated)
        self._history.append(build_assistant_message(assistant_text))
        problems = list(parsed.problems)
        shown: list[int] = []
        observation: Message | None = None

        if ProblemCode.TRUNCATED in parsed.codes:
            status = EpisodeStatus.TRUNCATED
        elif parsed.attempted == "answer":
            status = EpisodeStatus.ANSWERED if parsed.ok else EpisodeStatus.INVALID_ANSWER
        elif parsed.kind == "tool_call":
            assert parsed.target_frames is not None
            indices, call_problems, notes = self._check_frames(parsed.target_frames)
            problems += call_problems
            if call_problems:
                status, observation = EpisodeStatus.INVALID_TURN, build_feedback_message(call_problems, True, notes)
            else:
                shown = indices
                self.num_tool_calls += 1
                if self.num_tool_calls > self.config.max_tool_calls:
                    status, shown = EpisodeStatus.TOOL_BUDGET_EXCEEDED, []
                else:
                    status, observation = EpisodeStatus.RUNNING, self._frames_observation(shown, notes)
        else:
            as_tool = parsed.attempted == "tool_call"
            status, observation = EpisodeStatus.INVALID_TURN, build_feedback_message(problems, as_tool)

        if parsed.attempted == "answer":
            self.verdicts = dict(parsed.verdicts)
        if not status.done and len(self.turns) + 1 >= self.config.max_turns:
            status, observation, shown = EpisodeStatus.TURN_LIMIT, None, []
        if observation is not None:
            self._history.append(observation)
            if shown:
                self._frame_turns.append(len(self._history) - 1)
            if self._over_context():
                # The model never sees this observation: take it back so messages() shows the final context.
                self._history.pop()
                if shown:
                    self._frame_turns.pop()
                status, observation, shown = EpisodeStatus.CONTEXT_EXCEEDED, None, []
        self.status = status
        self.turns.append(TurnRecord(assistant_text, parsed, problems, status, shown))
        info = {
            "turn": len(self.turns) - 1,
            "problems": [p.code.value for p in problems],
            "num_tool_calls": self.num_tool_calls,
            "frames": shown,
            "verdicts": dict(self.verdicts),
        }
        return StepResult(observation, status.done, status, info)

    def _check_frames(self, requested: list[int]) -> tuple[list[int], list[Problem], list[str]]:
        """Distinct in-range indices (sorted), the problems that reject the call, and notes for the model."""
        unique = list(dict.fromkeys(requested))
        notes = []
        if len(unique) < len(requested):
            notes.append(f"Duplicate indices were dropped; unique indices: {unique}.")
        limit = max(self.pool_sizes)
        problems = []
        bad = [i for i in unique if not 0 <= i < limit]
        if bad:
            problems.append(Problem(ProblemCode.INDEX_OUT_OF_RANGE, f"indices {bad} are outside 0-{limit - 1}"))
        if len(unique) > self.config.max_frames_per_call:
            problems.append(
                Problem(
                    ProblemCode.TOO_MANY_FRAMES,
                    f"{len(unique)} frames requested; at most {self.config.max_frames_per_call} per call",
                )
            )
        return sorted(unique), problems, notes

    def _frames_observation(self, indices: list[int], notes: list[str]) -> Message:
        frames: list[Frame] = []
        for index in indices:  # interleaved per index so the same moment of both videos sits side by side
            for video in (1, 2):
                if index < self.pool_sizes[video - 1]:
                    frames.append(self.frame(video, index))
                else:
                    notes.append(f"Video {video} has no frame {index} (its pool has {self.pool_sizes[video - 1]}).")
        left = self.config.max_tool_calls - self.num_tool_calls
        notes.append(
            f"{left} tool call{'s' if left != 1 else ''} left." if left else "No tool calls left; give your answer."
        )
        return build_frames_message(frames, notes)

    # -------------------------------------------------------------------------------------------------- outcome

    def outcome(self) -> TraceOutcome:
        return TraceOutcome(
            verdicts=dict(self.verdicts),
            turn_valid=[t.valid for t in self.turns],
            num_tool_calls=self.num_tool_calls,
        )


def frame_pool_from_arrays(frames: np.ndarray, fps: float = 1.0) -> VideoClip:
    """A pool from frames already in memory ([T, H, W, 3] uint8, one every 1/fps seconds), e.g. generated videos."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    count = len(frames)
    return VideoClip(frames, np.arange(count) / fps, np.arange(count), fps=fps, num_frames_total=count)
