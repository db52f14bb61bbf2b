"""Baseline: plain TRL ``GRPOTrainer`` with ``environment_factory`` and no memory window.

TRL's tool loop keeps one append-only sequence per trace (prompt, completion, tool results, next completion, ...),
with the tool-result tokens masked out of the loss. It cannot drop older tool images from the context, so this
baseline runs the VR-Thinker episode with ``memory_window=None`` (every frame stays) and one training sequence per
trace; the own loop (:mod:`vr_thinker.grpo_loop`) trains each turn on the windowed context it saw. Comparing the two
on the same data shows what the window costs or saves (context length, memory, accuracy).

Pieces:
- :class:`TRLJudgeEnvironment`: what ``environment_factory`` returns. ``reset(**row)`` starts a
  :class:`~vr_thinker.env.VideoPairEnv` for the dataset row and returns the first user turn (text and initial
  frames as image parts, appended to the row's prompt by TRL); its public method ``select_frames`` is the tool,
  answered with the frames as image parts. Index checks, the per-call frame limit and the call budget are the
  environment's.
- :func:`judge_dataset`: one row per pair (system prompt, empty user turn the reset fills, pair fields).
- :func:`make_reward_function`: the VR-Thinker reward of each completion. TRL hands over completions as parsed
  messages (``reasoning_content`` = the think block, ``tool_calls``, ``content``); each assistant message is put back
  into the protocol layout and parsed strictly, so the format reward follows :mod:`vr_thinker.protocol`. Groups for
  the exploration term are the completions of one pair in the process's batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets

from mmreward.data.media import VideoClip
from mmreward.data.records import PreferenceRecord
from vr_thinker.env import EnvConfig, VideoPairEnv
from vr_thinker.protocol import (
    OVERALL,
    TOOL_NAME,
    DimensionsLike,
    build_system_prompt,
    normalize_dimensions,
    parse_assistant_turn,
    verdicts_from_label,
)
from vr_thinker.rewards import RewardConfig, TraceOutcome, group_rewards

Video = str | Path | VideoClip


def baseline_env_config(config: EnvConfig) -> EnvConfig:
    """The episode settings of the baseline: the same budgets, no memory window (TRL keeps every tool image)."""
    return replace(config, memory_window=None)


class TRLJudgeEnvironment:
    """One judging episode per rollout, driven by TRL's tool loop (see the module docstring)."""

    def __init__(self, env_config: EnvConfig, dimensions: DimensionsLike):
        self.env_config = baseline_env_config(env_config)
        self.dimensions = normalize_dimensions(dimensions)
        self.env: VideoPairEnv | None = None

    def reset(self, pair_id: str, judge_prompt: str, video_1: Video, video_2: Video, **_: Any) -> list[dict[str, Any]]:
        self.env = VideoPairEnv(judge_prompt, video_1, video_2, self.dimensions, self.env_config)
        return self.env.reset()[-1]["content"]

    def select_frames(self, target_frames: list[int]) -> list[dict[str, Any]]:
        """Show more frames of both videos: the same pool positions of Video 1 and Video 2.

        Args:
            target_frames: Frame pool indices (0-based) to view in both videos.

        Returns:
            The chosen frames, each labelled with its video and pool index, or a note on what was wrong.
        """
        if self.env is None:
            raise RuntimeError("select_frames before reset")
        if self.env.done:
            return [{"type": "text", "text": f"The episode is over ({self.env.status.value}); give your answer."}]
        call = json.dumps({"name": TOOL_NAME, "arguments": {"target_frames": target_frames}})
        # The environment checks calls in the protocol's layout; the reasoning is scored by the reward function.
        result = self.env.step(f"<think>-</think>\n<tool_call>\n{call}\n</tool_call>")
        if result.observation is None:
            return [{"type": "text", "text": f"No frames shown: {result.status.value}. Give your answer."}]
        return result.observation["content"]

    @property
    def num_tool_calls(self) -> int:
        return self.env.num_tool_calls if self.env is not None else 0


def judge_dataset(records: Sequence[PreferenceRecord], dimensions: DimensionsLike,
                  env_config: EnvConfig) -> datasets.Dataset:
    """Rows for ``GRPOTrainer``: the system prompt, a user turn that ``reset`` fills with the first observation,
    and the pair (prompt, video paths, label as JSON of protocol verdicts)."""
    dims = normalize_dimensions(dimensions)
    system = env_config.system_prompt or build_system_prompt(env_config.max_tool_calls, env_config.max_frames_per_call)
    rows = []
    for record in records:
        if record.a.video is None or record.b.video is None:
            raise ValueError(f"record {record.id!r}: the judge needs a video on both sides")
        label = verdicts_from_label({k: record.label[k] for k in [*dims, OVERALL]})
        rows.append({
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": ""}],
            "pair_id": record.id,
            "judge_prompt": record.prompt,
            "video_1": str(record.a.video),
            "video_2": str(record.b.video),
            "label": json.dumps(label),
        })
    return datasets.Dataset.from_list(rows)


def assistant_text(message: Mapping[str, Any]) -> str:
    """A parsed assistant message back in the protocol layout (think block, then the tool call or the answer)."""
    parts = []
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        parts.append(f"<think>{reasoning}</think>")
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content.strip():
        parts.append(content.strip())
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        body = json.dumps({"name": function.get("name"), "arguments": function.get("arguments")})
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(parts)


def completion_outcome(messages: Sequence[Mapping[str, Any]], dimensions: DimensionsLike,
                       num_tool_calls: int) -> TraceOutcome:
    """Format and verdicts of one completion (its assistant messages parsed strictly), with the tool calls the
    environment accepted."""
    turns = [parse_assistant_turn(assistant_text(m), dimensions) for m in messages if m.get("role") == "assistant"]
    verdicts = dict(turns[-1].verdicts) if turns and turns[-1].attempted == "answer" else {}
    return TraceOutcome(verdicts=verdicts, turn_valid=[t.ok for t in turns], num_tool_calls=num_tool_calls)


def make_reward_function(dimensions: DimensionsLike, config: RewardConfig = RewardConfig()) -> Callable[..., list]:
    """A ``GRPOTrainer`` reward function giving the VR-Thinker total reward of every completion."""
    dims = normalize_dimensions(dimensions)

    def vr_thinker_reward(completions: list, pair_id: list[str], label: list[str], environments: list | None = None,
                          **_: Any) -> list[float]:
        calls = [env.num_tool_calls for env in environments] if environments else [0] * len(completions)
        outcomes = [completion_outcome(c, dims, n) for c, n in zip(completions, calls)]
        totals = [0.0] * len(completions)
        for pair in dict.fromkeys(pair_id):
            index = [i for i, p in enumerate(pair_id) if p == pair]
            group = group_rewards([outcomes[i] for i in index], json.loads(label[index[0]]), config)
            for i, reward in zip(index, group):
                totals[i] = reward.total
        return totals

    return vr_thinker_reward
