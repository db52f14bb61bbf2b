"""The judging episode of a preset: frame pools of two videos, the ``select_frames`` tool, the memory window and
the budgets. The model only sees text and images; this class owns everything else.

    env = VideoPairEnv("a red ball bouncing", "v1.mp4", "v2.mp4", load_preset("vr-thinker"))
    messages = env.reset()                      # system + first user turn with the initial frames
    result = env.step(generated_text)           # one assistant turn -> StepResult (observation, done, status)
    messages = env.messages()                   # the next context (memory window applied)

Frame pools: each video is sampled uniformly into ``preset.frames.per_video`` frames; the tool's frame numbers run
over both pools, Video 1 first (see :mod:`vr_thinker.protocol`). Every turn goes through
:func:`vr_thinker.protocol.check_turn`; a turn that is not a well-formed tool call, or a call beyond a budget, ends
the episode (as in the official loop). Model output never raises; misuse of the API does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmreward.data.media import VideoClip, get_frame_pool, sample_by_count
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.protocol import (
    Message,
    ToolResult,
    TurnCheck,
    TurnState,
    assistant_message,
    check_turn,
    first_user_message,
    system_message,
    text_part,
    tool_reply_message,
)
from vr_thinker.rewards import TraceOutcome

Video = str | Path | VideoClip


class EpisodeStatus(str, Enum):
    RUNNING = "running"
    ANSWERED = "answered"  # a well-formed final answer
    INVALID_ANSWER = "invalid_answer"  # a final answer with format problems
    INVALID_TURN = "invalid_turn"  # a malformed turn that is not an answer
    TRUNCATED = "truncated"  # the turn hit the token limit
    TOOL_BUDGET_EXCEEDED = "tool_budget_exceeded"  # a call after the last allowed one (not run)
    TURN_LIMIT = "turn_limit"  # a call in the last allowed turn (not run)
    CONTEXT_EXCEEDED = "context_exceeded"  # context + turn over the token cap (the call is not run)
    IMAGE_LIMIT = "image_limit"

    @property
    def done(self) -> bool:
        return self is not EpisodeStatus.RUNNING


_END_STATUS = {
    "answer": EpisodeStatus.ANSWERED,
    "call_budget": EpisodeStatus.TOOL_BUDGET_EXCEEDED,
    "turn_limit": EpisodeStatus.TURN_LIMIT,
    "context": EpisodeStatus.CONTEXT_EXCEEDED,
    "images": EpisodeStatus.IMAGE_LIMIT,
}


@dataclass
class TurnRecord:
    """One assistant turn: its text, the protocol's reading, the status after it and the pool indices shown."""

    text: str
    check: TurnCheck
    status: EpisodeStatus
    frames: list[int] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.check.format_valid

    @property
    def tool(self) -> ToolResult | None:
        return self.check.tool_call


@dataclass
class StepResult:
    """observation: the message appended to the context (None when done). info: turn, problems (codes),
    num_tool_calls, frames (1-based numbers shown), verdicts (the final answer's, once given)."""

    observation: Message | None
    done: bool
    status: EpisodeStatus
    info: dict[str, Any]


def frame_pool_from_arrays(frames: np.ndarray, fps: float = 1.0) -> VideoClip:
    """A pool from frames already in memory ([T, H, W, 3] uint8, one every 1/fps seconds), e.g. generated videos."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    count = len(frames)
    return VideoClip(frames, np.arange(count) / fps, np.arange(count), fps=fps, num_frames_total=count)


def _resample(clip: VideoClip, count: int) -> VideoClip:
    """The clip with exactly ``count`` frames spread uniformly over it (frames repeat when it has fewer)."""
    if len(clip.frames) == count:
        return clip
    index = sample_by_count(len(clip.frames), count)
    return VideoClip(clip.frames[index], clip.timestamps[index], clip.indices[index], clip.fps, clip.num_frames_total)


class VideoPairEnv:
    """Judging episode for one (prompt, Video 1, Video 2) pair under a preset.

    dimensions: a dimension set name of the preset, or the dimensions themselves (default: the preset's default).
    seed: draws the official over-limit reduction of frame lists, so an episode repeats exactly.
    """

    def __init__(self, prompt: str, video_1: Video, video_2: Video, preset: ProtocolPreset,
                 dimensions: str | Sequence[DimensionSpec] | None = None, seed: int = 0):
        self.prompt = prompt
        self.preset = preset
        self.dimensions = tuple(preset.dimensions(dimensions) if dimensions is None or isinstance(dimensions, str)
                                else dimensions)
        self.seed = seed
        self.pools = (self._pool(video_1), self._pool(video_2))
        self.tools: list[dict] = []  # the tool is described in the system turn itself
        self._images: dict[int, Image.Image] = {}
        self._history: list[Message] = []
        self._frame_turns: list[int] = []  # positions in _history of tool replies that carry frames
        self.turns: list[TurnRecord] = []
        self.num_tool_calls = 0
        self.verdicts: dict[str, int] = {}
        self.status: EpisodeStatus | None = None
        self._rng = np.random.default_rng(seed)

    def _pool(self, video: Video) -> VideoClip:
        per_video = self.preset.frames.per_video
        if isinstance(video, VideoClip):
            if len(video.frames) == 0:
                raise ValueError("in-memory clip: empty frame pool")
            return _resample(video, per_video)
        return get_frame_pool(video, num_frames=per_video)

    # ------------------------------------------------------------------------------------------------- frames

    @property
    def total_frames(self) -> int:
        return self.preset.total_frames

    @property
    def done(self) -> bool:
        return self.status is not None and self.status.done

    def frame(self, index: int) -> Image.Image:
        """The image of pool index ``index`` (0-based over both videos; frame number ``index + 1``), resized as the
        preset says; one PIL object per frame, so repeated renders share it."""
        if index not in self._images:
            per_video = self.preset.frames.per_video
            video, position = divmod(index, per_video)
            image = Image.fromarray(np.asarray(self.pools[video].frames[position]))
            side = self.preset.prompt.image_side
            if side is not None and max(image.size) != side:
                scale = side / max(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.Resampling.BICUBIC)
            self._images[index] = image
        return self._images[index]

    def initial_indices(self) -> list[int]:
        """Pool indices (0-based, over both videos) of the first turn's frames, Video 1's first."""
        frames = self.preset.frames
        total, count = self.total_frames, frames.initial_count
        if frames.initial_rule == "stride":
            return list(range(total))[:: max(1, total // count)][:count]
        half = count // 2
        per_video = np.rint(np.linspace(0, frames.per_video - 1, half)).astype(int).tolist()
        return per_video + [frames.per_video + i for i in per_video]

    def _initial_frames(self) -> list[Image.Image]:
        images = [self.frame(i) for i in self.initial_indices()]
        if self.preset.prompt.first_turn_media == "video" and len({im.size for im in images}) > 1:
            # One video input needs frames of one size: Video 2's frames take Video 1's size.
            size = images[0].size
            images = [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]
        return images

    # ------------------------------------------------------------------------------------------------ context

    def reset(self) -> list[Message]:
        self._history = [
            system_message(self.preset, self.dimensions),
            first_user_message(self.preset, self.prompt, self.dimensions, self._initial_frames()),
        ]
        self._frame_turns, self.turns, self.num_tool_calls, self.verdicts = [], [], 0, {}
        self._rng = np.random.default_rng(self.seed)
        self.status = EpisodeStatus.RUNNING
        return self.messages()

    def messages(self, before_turn: int | None = None) -> list[Message]:
        """The context with the memory window applied: now, or as the model saw it before assistant turn
        ``before_turn`` (0-based), which is what a per-turn training row needs. The first turn's frames stay."""
        history = self._history
        if before_turn is not None:
            positions = [i for i, m in enumerate(history) if m["role"] == "assistant"]
            if not 0 <= before_turn <= len(positions):
                raise IndexError(f"before_turn={before_turn}, episode has {len(positions)} assistant turns")
            history = history[: positions[before_turn]] if before_turn < len(positions) else history
        frame_turns = [i for i in self._frame_turns if i < len(history)]
        window = self.preset.limits.memory_window
        dropped = set(frame_turns if window == 0 else frame_turns[:-window] if window is not None else [])
        return [self._without_images(m) if i in dropped else m for i, m in enumerate(history)]

    def _without_images(self, message: Message) -> Message:
        placeholder = self.preset.prompt.dropped_image_text
        content = []
        for part in message["content"]:
            if part["type"] != "image":
                content.append(part)
            elif placeholder:
                content.append(text_part(placeholder))
        return {**message, "content": content}

    def frames_shown(self) -> int:
        """Frames the episode has shown so far (first turn and tool replies), what ``limits.max_images`` caps."""
        return self.preset.frames.initial_count + sum(len(t.frames) for t in self.turns)

    # --------------------------------------------------------------------------------------------------- step

    def state(self, truncated: bool = False, context_tokens: int | None = None,
              output_tokens: int | None = None) -> TurnState:
        return TurnState(calls_made=self.num_tool_calls, turn_index=len(self.turns), context_tokens=context_tokens,
                         output_tokens=output_tokens, images=self.frames_shown(), truncated=truncated,
                         rng=self._rng, dimensions=self.dimensions)

    def step(self, assistant_text: str, truncated: bool = False, context_tokens: int | None = None,
             output_tokens: int | None = None) -> StepResult:
        """Apply one assistant turn. truncated: generation stopped at its token limit; context_tokens /
        output_tokens: token counts of the turn's context and of the turn (the context cap needs both)."""
        if self.status is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            raise RuntimeError(f"the episode is over (status {self.status.value}); call reset()")
        check = check_turn(assistant_text, self.state(truncated, context_tokens, output_tokens), self.preset)
        self._history.append(assistant_message(assistant_text))
        if check.answer is not None:
            self.verdicts = dict(check.answer)
        observation: Message | None = None
        shown: list[int] = []
        if check.final:
            status = _END_STATUS.get(check.end_reason)
            if status is None:
                status = (EpisodeStatus.TRUNCATED if truncated else
                          EpisodeStatus.INVALID_ANSWER if check.answer is not None else EpisodeStatus.INVALID_TURN)
        else:
            status = EpisodeStatus.RUNNING
            result = check.tool_call
            assert result is not None
            self.num_tool_calls += 1
            shown = list(result.frames)
            observation = tool_reply_message(self.preset, result, [self.frame(i) for i in shown])
            self._history.append(observation)
            if shown:
                self._frame_turns.append(len(self._history) - 1)
        self.status = status
        self.turns.append(TurnRecord(assistant_text, check, status, shown))
        info = {
            "turn": len(self.turns) - 1,
            "problems": [p.code.value for p in check.problems],
            "num_tool_calls": self.num_tool_calls,
            "frames": [i + 1 for i in shown],
            "verdicts": dict(self.verdicts),
        }
        return StepResult(observation, status.done, status, info)

    # ------------------------------------------------------------------------------------------------ outcome

    def outcome(self) -> TraceOutcome:
        calls = [t.tool for t in self.turns]
        return TraceOutcome(
            verdicts=dict(self.verdicts),
            turn_valid=[t.valid for t in self.turns],
            num_tool_calls=self.num_tool_calls,
            recommends=[t.check.recommend for t in self.turns],
            ended_after_tool_error=len(calls) >= 2 and calls[-1] is None and calls[-2] is not None and calls[-2].error,
            answered=self.status is EpisodeStatus.ANSWERED or bool(self.verdicts),
        )
