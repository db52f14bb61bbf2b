"""SFT rows from VR-Thinker episodes, and the collator that puts the loss on assistant tokens only.

The memory window means each assistant turn was generated from its own context: older tool images had been
replaced by text placeholders. A training row therefore holds the exact context a turn saw
(``env.messages(before_turn=k)``) followed by that turn. Consecutive turns share one row while each context
extends the previous row unchanged (always so with no memory window, and for the first tool call with window 1),
so a trace without dropped images is one row with every turn trained.

Loss: only the trained assistant turns of a row carry labels (their text and the end-of-turn tokens, as the chat
template's ``{% generation %}`` block marks them); system, user and tool tokens (images included) and assistant
turns that are mere context get -100. The images of every turn stay in the forward pass.

Examples (what :meth:`TraceRows.dataset` yields and :class:`VRThinkerSFTCollator` takes) are dicts with
``messages`` (transformers multimodal chat format, PIL images inline), ``images`` (the same images in order, which
is how TRL's ``SFTTrainer`` recognises a vision dataset), ``tools``, ``loss_turns`` (indices of the trained
assistant messages among the row's assistant messages) and ``trace_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from vr_thinker.cold_start import EpisodeTrace, replay
from vr_thinker.env import Message, VideoPairEnv
from vr_thinker.protocol import assistant_message
from vr_thinker.rollout.context import message_media, seconds_per_grid

IGNORE_INDEX = -100


@dataclass
class SFTRow:
    """One training row: ``messages`` end with the last trained assistant turn; ``loss_turns`` are the episode
    turn numbers trained in this row (equal to their index among the row's assistant messages, since the memory
    window drops images, never messages)."""

    trace_id: str
    messages: list[Message]
    tools: list[dict]
    loss_turns: list[int]

    def example(self) -> dict[str, Any]:
        images = [p["image"] for m in self.messages for p in _parts(m) if p.get("type") == "image"]
        return {
            "messages": self.messages,
            "images": images,
            "tools": self.tools,
            "loss_turns": list(self.loss_turns),
            "trace_id": self.trace_id,
        }


def _parts(message: Message) -> list[dict]:
    content = message["content"]
    return [] if isinstance(content, str) else content


def _same_message(a: Message, b: Message) -> bool:
    """Equal role and content; images compare by identity (the env keeps one PIL object per frame)."""
    if a["role"] != b["role"] or len(_parts(a)) != len(_parts(b)):
        return False
    if isinstance(a["content"], str) or isinstance(b["content"], str):
        return a["content"] == b["content"]
    for x, y in zip(a["content"], b["content"]):
        if x.get("type") != y.get("type"):
            return False
        if x.get("type") == "image" and x["image"] is not y["image"]:
            return False
        if x.get("type") != "image" and x != y:
            return False
    return True


def _extends(prefix: Sequence[Message], messages: Sequence[Message]) -> bool:
    return len(prefix) <= len(messages) and all(_same_message(p, m) for p, m in zip(prefix, messages))


def episode_rows(env: VideoPairEnv, trace_id: str = "", merge: bool = True) -> list[SFTRow]:
    """Rows of a finished episode, one per assistant turn, or merged where contexts extend each other."""
    if not env.turns:
        raise ValueError(f"{trace_id or 'episode'}: no assistant turns to train on")
    rows: list[SFTRow] = []
    for k, turn in enumerate(env.turns):
        context = env.messages(before_turn=k)
        assistant = assistant_message(turn.text)
        if merge and rows and _extends(rows[-1].messages, context):
            rows[-1].messages = [*context, assistant]
            rows[-1].loss_turns.append(k)
        else:
            rows.append(SFTRow(trace_id, [*context, assistant], list(env.tools), [k]))
    return rows


class TraceRows:
    """The rows of many traces, built on demand: a row replays its trace (frames come from the process-wide frame
    pool cache), so only trace texts and frame indices are held, never decoded images."""

    def __init__(self, traces: Sequence[EpisodeTrace], merge: bool = True):
        self.traces = list(traces)
        self.merge = merge
        self.index: list[tuple[int, int]] = []  # (trace, row within the trace)
        self.num_turns = 0
        for i, trace in enumerate(self.traces):
            rows = episode_rows(replay(trace), trace.id, merge)
            self.index += [(i, j) for j in range(len(rows))]
            self.num_turns += sum(len(r.loss_turns) for r in rows)

    def __len__(self) -> int:
        return len(self.index)

    def row(self, i: int) -> SFTRow:
        trace_i, row_j = self.index[i]
        trace = self.traces[trace_i]
        return episode_rows(replay(trace), trace.id, self.merge)[row_j]

    def _transform(self, batch: dict[str, list]) -> dict[str, list]:
        examples = [self.row(i).example() for i in batch["row"]]
        return {key: [ex[key] for ex in examples] for key in examples[0]}

    def dataset(self) -> datasets.Dataset:
        """A ``datasets.Dataset`` (what TRL's ``SFTTrainer`` takes) whose items are built on access: it stores row
        numbers and a transform turns them into examples."""
        table = datasets.Dataset.from_dict({"row": list(range(len(self)))})
        table.set_transform(self._transform)
        return table


def training_chat_template(processor: Any) -> str:
    """The processor's chat template if it marks assistant text with ``{% generation %}``, else TRL's training
    twin of it (TRL ships one for the Qwen3-VL tool template that ``mmreward.backbones`` installs)."""
    template = processor.chat_template
    if isinstance(template, dict):
        template = template["default"]
    if template is None:
        raise ValueError("the processor has no chat template")
    if has_generation_markers(template):
        return template
    patched = get_training_chat_template(processor)  # raises ValueError for templates TRL cannot patch
    return template if patched is None else patched


def _spans(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of ones in a 1-D 0/1 tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.long), mask.long(), torch.zeros(1, dtype=torch.long)])
    edges = torch.diff(padded)
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends))


@dataclass
class VRThinkerSFTCollator:
    """Render examples with the chat template, process their images and set labels on trained turns only.

    chat_template: a template with ``{% generation %}`` markers (default: :func:`training_chat_template`).
    max_length: longest allowed row; a longer one raises (cutting a row would cut images out of the context).
    """

    processor: Any
    chat_template: str | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.chat_template is None:
            self.chat_template = training_chat_template(self.processor)
        elif not has_generation_markers(self.chat_template):
            raise ValueError("chat_template needs {% generation %} markers to find the assistant tokens")

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tools = examples[0]["tools"]
        if any(ex["tools"] != tools for ex in examples):
            raise ValueError("examples of one batch must share the tool schema (same max_frames_per_call)")
        out = self.processor.apply_chat_template(
            [ex["messages"] for ex in examples],
            tools=tools or None,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
        )
        assistant = out.pop("assistant_masks") * out["attention_mask"]
        labels = torch.full_like(out["input_ids"], IGNORE_INDEX)
        for b, ex in enumerate(examples):
            spans = _spans(assistant[b])
            count = sum(m["role"] == "assistant" for m in ex["messages"])
            if len(spans) != count:
                raise ValueError(
                    f"trace {ex['trace_id']!r}: the chat template marks {len(spans)} assistant spans for {count} "
                    "assistant messages (an empty assistant turn?)"
                )
            for turn in ex["loss_turns"]:
                start, end = spans[turn]
                labels[b, start:end] = out["input_ids"][b, start:end]
        length = int(out["attention_mask"].sum(dim=1).max())
        if self.max_length is not None and length > self.max_length:
            ids = [ex["trace_id"] for ex in examples]
            raise ValueError(f"a row of traces {ids} has {length} tokens > max_length={self.max_length}")
        out["labels"] = labels
        if "second_per_grid_ts" in out:
            # The rollout places video frames in time from the message's frame rate; the processor would take
            # it from video metadata the frame lists do not have.
            spans = [seconds_per_grid(self.processor, fps) for ex in examples
                     for kind, _, fps in message_media(ex["messages"]) if kind == "video"]
            out["second_per_grid_ts"] = torch.tensor(spans)
        return dict(out)
