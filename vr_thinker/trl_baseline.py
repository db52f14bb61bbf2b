"""Baseline: plain TRL ``GRPOTrainer`` with ``environment_factory`` and no memory window.

TRL's tool loop keeps one append-only sequence per trace (prompt, completion, tool results, next completion, ...),
with the tool-result tokens masked out of the loss. It cannot drop older tool images from the context, so this
baseline runs the VR-Thinker episode with no memory window (every frame stays) and one training sequence per
trace; the own loop (:mod:`vr_thinker.grpo_loop`) trains each turn on the windowed context it saw. Comparing the two
on the same data shows what the window costs or saves (context length, memory, accuracy).

Pieces:
- :class:`TRLJudgeEnvironment`: what ``environment_factory`` returns. ``reset(**row)`` starts a
  :class:`~vr_thinker.env.VideoPairEnv` for the dataset row and returns the first user turn (text and initial
  frames as image parts, appended to the row's prompt by TRL); its public method ``select_frames`` is the tool,
  answered with the frames as image parts. Index checks, the per-call frame limit and the call budget are the
  environment's.
- :func:`judge_dataset`: one row per pair (system prompt, empty user turn the reset fills, pair fields).
- :func:`make_reward_function`: the preset's reward of each completion. TRL hands over completions as parsed
  messages (``content``, ``tool_calls``, the ``<think>`` block as ``reasoning_content``; TRL's parser drops the
  ``<synthesis>`` block before it); each assistant message is put back into the protocol layout and checked
  strictly, so the format term follows :mod:`vr_thinker.protocol` (the synthesis aside). Groups for
  the curiosity / exploration terms are the completions of one pair in the process's batch. TRL answers a tool call
  in its own tool-role layout, not the preset's user-turn replies: a difference of this baseline only.
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
from vr_thinker.env import VideoPairEnv
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.protocol import TOOL_NAME, TurnState, check_turn, label_verdicts
from vr_thinker.rewards import TraceOutcome, trace_reward

Video = str | Path | VideoClip


def baseline_preset(preset: ProtocolPreset) -> ProtocolPreset:
    """The protocol of the baseline: the same preset without a memory window (TRL keeps every tool image)."""
    return replace(preset, limits=replace(preset.limits, memory_window=None),
                   overrides=(*preset.overrides, "limits.memory_window=null"))


class TRLJudgeEnvironment:
    """One judging episode per rollout, driven by TRL's tool loop (see the module docstring)."""

    def __init__(self, preset: ProtocolPreset, dimensions: Sequence[DimensionSpec]):
        self.preset = baseline_preset(preset)
        self.dimensions = tuple(dimensions)
        self.env: VideoPairEnv | None = None

    def reset(self, pair_id: str, judge_prompt: str, video_1: Video, video_2: Video, **_: Any) -> list[dict[str, Any]]:
        self.env = VideoPairEnv(judge_prompt, video_1, video_2, self.preset, self.dimensions)
        return self.env.reset()[-1]["content"]

    def select_frames(self, target_frames: list[int]) -> list[dict[str, Any]]:
        """Show more frames: frame numbers 1..N over both videos, Video 1's first.

        Args:
            target_frames: Frame numbers to view (1-based; Video 2's frames follow Video 1's).

        Returns:
            The frames after the protocol's reply text, or the protocol's notice or error text.
        """
        if self.env is None:
            raise RuntimeError("select_frames before reset")
        if self.env.done:
            return [{"type": "text", "text": f"The episode is over ({self.env.status.value}); give your answer."}]
        # The environment checks calls in the protocol's layout; the reasoning is scored by the reward function.
        result = self.env.step(_call_turn(self.preset, self.dimensions, target_frames))
        if result.observation is None:
            return [{"type": "text", "text": f"No frames shown: {result.status.value}. Give your answer."}]
        return result.observation["content"]

    @property
    def num_tool_calls(self) -> int:
        return self.env.num_tool_calls if self.env is not None else 0


def _call_turn(preset: ProtocolPreset, dimensions: Sequence[DimensionSpec], frames: Any) -> str:
    """A well-formed turn carrying only the call (what the environment needs to run the tool)."""
    tags = preset.answer
    keys = [*(d.key for d in dimensions), tags.overall_key]
    recommend = ", ".join(f"{k}=0" for k in keys) + f", {tags.confidence_key}={max(tags.confidence_values)}"
    call = json.dumps({"name": TOOL_NAME, "arguments": {"target_frames": frames}})
    return (f"<{tags.synthesis_tag}>-</{tags.synthesis_tag}><{tags.think_tag}>-</{tags.think_tag}>"
            f"<{tags.recommend_tag}>{recommend}</{tags.recommend_tag}><tool_call>\n{call}\n</tool_call>")


def judge_dataset(records: Sequence[PreferenceRecord], preset: ProtocolPreset,
                  dimensions: Sequence[DimensionSpec]) -> datasets.Dataset:
    """Rows for ``GRPOTrainer``: the system prompt, a user turn that ``reset`` fills with the first observation,
    and the pair (prompt, video paths, label as JSON of verdicts by answer key)."""
    system = preset.system_text(dimensions)
    rows = []
    for record in records:
        if record.a.video is None or record.b.video is None:
            raise ValueError(f"record {record.id!r}: the judge needs a video on both sides")
        label = label_verdicts(record.label, preset, dimensions)
        rows.append({
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": ""}],
            "pair_id": record.id,
            "judge_prompt": record.prompt,
            "video_1": str(record.a.video),
            "video_2": str(record.b.video),
            "label": json.dumps(label),
        })
    return datasets.Dataset.from_list(rows)


def assistant_text(message: Mapping[str, Any], preset: ProtocolPreset) -> str:
    """A parsed assistant message back in the protocol layout. TRL's Qwen response parser keeps the ``<think>`` block
    as ``reasoning_content`` and drops the text before it, the ``<synthesis>`` block: that one is put back empty, so
    the baseline's format term cannot check the synthesis (a limitation of this baseline only)."""
    tags = preset.answer
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = content.strip()
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        content = (f"<{tags.synthesis_tag}></{tags.synthesis_tag}><{tags.think_tag}>{reasoning}</{tags.think_tag}>"
                   + content)
    parts = [content] if content else []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        body = json.dumps({"name": function.get("name"), "arguments": function.get("arguments")})
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(parts)


def completion_outcome(messages: Sequence[Mapping[str, Any]], preset: ProtocolPreset,
                       dimensions: Sequence[DimensionSpec], num_tool_calls: int) -> TraceOutcome:
    """Format and verdicts of one completion (its assistant messages checked strictly), with the tool calls the
    environment answered."""
    checks = [check_turn(assistant_text(m, preset), TurnState(turn_index=i, dimensions=dimensions), preset)
              for i, m in enumerate(m for m in messages if m.get("role") == "assistant")]
    verdicts = dict(checks[-1].answer) if checks and checks[-1].answer is not None else {}
    return TraceOutcome(verdicts=verdicts, turn_valid=[c.format_valid for c in checks], num_tool_calls=num_tool_calls,
                        recommends=[c.recommend for c in checks], answered=bool(verdicts))


def make_reward_function(preset: ProtocolPreset, dimensions: Sequence[DimensionSpec]) -> Callable[..., list]:
    """A ``GRPOTrainer`` reward function giving the preset's total reward of every completion."""

    def vr_thinker_reward(completions: list, pair_id: list[str], label: list[str], environments: list | None = None,
                          **_: Any) -> list[float]:
        calls = [env.num_tool_calls for env in environments] if environments else [0] * len(completions)
        outcomes = [completion_outcome(c, preset, dimensions, n) for c, n in zip(completions, calls)]
        totals = [0.0] * len(completions)
        for pair in dict.fromkeys(pair_id):
            index = [i for i, p in enumerate(pair_id) if p == pair]
            group = [outcomes[i] for i in index]
            wanted = {k: int(v) for k, v in json.loads(label[index[0]]).items()}
            for i in index:
                totals[i] = trace_reward(outcomes[i], wanted, preset, group=group).total
        return totals

    return vr_thinker_reward
