"""GRPO pieces for multi-turn VR-Thinker traces: advantages, training rows, token log-probs and the loss.

Multi-turn rows. The memory window means each assistant turn was generated from its own context (older tool images
replaced by text placeholders), so a trace cannot be trained as one append-only sequence. Every assistant turn
becomes a row ``context_ids + generated_ids`` holding exactly the tokens and images the model saw
(:attr:`vr_thinker.rollout.TurnTrace.input_ids`). With ``merge=True`` a turn whose context extends the previous
row unchanged (same ids, same images: no image left the window in between) joins that row, which gives the same
log-probs with one forward instead of two (causal attention; M-RoPE positions of a prefix do not depend on what
follows it).

Loss mask. Only model-generated tokens carry loss: system, user and tool turns (their images included), the chat
template's turn markers, earlier turns inside a merged row's context and teacher-forced turns are all masked. The
images of every turn stay in the forward pass as context.

Objective, per generated token t of trace i (advantage ``A_i`` shared by all its turns)::

    ratio_t = exp(logp_t - old_logp_t)
    A_t     = A_i - kl_coef * sum_{t' >= t in the same turn} k3_t'       (kl_in="reward": the official code's
              compute_reward; the KL is a reward, computed from the rollout policy, without gradient)
    loss_t  = -min(ratio_t * A_t, clip(ratio_t, 1 - clip_low, 1 + clip_high) * A_t)    (clip_high > clip_low: DAPO)
              + kl_coef * k3_t  (kl_in="loss")  - entropy_coef * H_t
    k3_t    = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1                     (>= 0, unbiased for KL)

Token losses are summed with weights (:func:`token_weights`): ``constant`` (the official masked_mean: the sum of a
micro-batch's token losses divided by a constant, 200, averaged over the micro-batches of an update),
``token_mean`` (every token of the step weighs the same) or ``trace_mean`` (each trace weighs the same however many
turns or tokens it has). The weights are fixed per step, so micro-batches that split a trace's rows across forwards
add up to exactly this loss.

Advantages are group-normalised over the G traces of one pair: ``(r - mean_g) / (std_g + eps)`` with the population
standard deviation and eps 1e-8 (the official code), or the unbiased one (DeepSeekMath's GRPO and TRL), or
``r - mean_g`` with ``scale="none"`` (Dr. GRPO).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from vr_thinker.grpo_config import ADVANTAGE_SCALES, KL_PLACES, LOSS_AGGREGATIONS
from vr_thinker.rollout import RolloutTrace


@dataclass(frozen=True)
class GRPOLossConfig:
    """Weights of the GRPO objective.

    clip_low / clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]`` (DAPO's decoupled clip; a
        higher upper bound leaves room to raise the probability of rare good tokens).
    kl_coef: beta of the k3 KL estimate to the reference model (0 skips the reference model altogether).
    kl_in: ``reward`` (subtracted from the advantages, summed from each token to the end of its turn; official) or
        ``loss`` (a per-token loss term).
    entropy_coef: weight of the entropy bonus (0 = off; the entropy is still logged).
    """

    clip_low: float = 0.2
    clip_high: float = 0.35
    kl_coef: float = 0.01
    kl_in: str = "reward"
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0 or self.clip_high < 0.0:
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0.0 or self.entropy_coef < 0.0:
            raise ValueError(f"kl_coef and entropy_coef must be >= 0, got {self.kl_coef}, {self.entropy_coef}")
        if self.kl_in not in KL_PLACES:
            raise ValueError(f"kl_in must be one of {KL_PLACES}, got {self.kl_in!r}")


# -------------------------------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: Sequence[float], groups: Sequence[Hashable], scale: str = "std", eps: float = 1e-8,
    population_std: bool = True,
) -> torch.Tensor:
    """Advantage of every trace: its reward minus its group's mean, divided by the group's standard deviation + eps
    (``scale="std"``; population std as the official code, or the unbiased one) or not (``"none"``). A group of one
    trace gets advantage 0."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards but {len(groups)} group ids")
    values = torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    out = torch.zeros_like(values)
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    for index in members.values():
        if len(index) < 2:
            continue
        group_values = values[index]
        centred = group_values - group_values.mean()
        std = group_values.std(unbiased=not population_std)
        out[index] = centred / (std + eps) if scale == "std" else centred
    return out.float()


# ------------------------------------------------------------------------------------------------------- rows


@dataclass
class PolicyRow:
    """One training row: ``input_ids`` (context and generated tokens), ``loss_mask`` (1 on the model-generated
    tokens trained here), the context's images and videos in token order with their patch grids (and each video's
    seconds per grid step), the index of its trace in the rollout batch and the trace's turns whose generated tokens
    it trains."""

    input_ids: list[int]
    loss_mask: list[int]
    images: list[Image.Image]
    image_grid_thw: list[tuple[int, int, int]]
    trace: int
    turns: list[int] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)
    video_grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    video_seconds: list[float] = field(default_factory=list)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def _extends(row: PolicyRow, context_ids: list[int], images: list[Image.Image], videos: list[list[Image.Image]]) -> bool:
    """The context starts with the row's tokens and the row's media (same objects: the rollout keeps one image per
    distinct frame), i.e. nothing left the memory window since the row's last turn."""
    n, k = len(row.input_ids), len(row.images)
    return (
        len(context_ids) >= n
        and context_ids[:n] == row.input_ids
        and len(images) >= k
        and all(a is b for a, b in zip(row.images, images[:k]))
        and len(videos) == len(row.videos)
        and all(all(a is b for a, b in zip(x, y)) for x, y in zip(row.videos, videos))
    )


def trace_rows(trace: RolloutTrace, trace_index: int, merge: bool = True) -> list[PolicyRow]:
    """Training rows of one trace (one per assistant turn, or merged where a context extends the previous row).
    Teacher-forced turns (``finish == "forced"``) are context, not trained; rows with nothing to train are left
    out."""
    rows: list[PolicyRow] = []
    for number, turn in enumerate(trace.turns):
        trained = 0 if turn.finish == "forced" else 1
        if merge and rows and _extends(rows[-1], turn.context_ids, turn.images, turn.videos):
            row = rows[-1]
            tail = turn.context_ids[len(row.input_ids) :]
            row.input_ids = row.input_ids + tail + turn.generated_ids
            row.loss_mask = row.loss_mask + [0] * len(tail) + [trained] * len(turn.generated_ids)
            row.images, row.image_grid_thw = list(turn.images), list(turn.image_grid_thw)
        else:
            row = PolicyRow(
                input_ids=list(turn.input_ids),
                loss_mask=[0] * len(turn.context_ids) + [trained] * len(turn.generated_ids),
                images=list(turn.images),
                image_grid_thw=list(turn.image_grid_thw),
                trace=trace_index,
                videos=[list(v) for v in turn.videos],
                video_grid_thw=list(turn.video_grid_thw),
                video_seconds=list(turn.video_seconds),
            )
            rows.append(row)
        if trained:
            row.turns.append(number)
    return [row for row in rows if row.num_loss_tokens]


def rollout_rows(traces: Sequence[RolloutTrace], merge: bool = True) -> list[PolicyRow]:
    """Rows of every trace of a rollout batch, in trace order (row.trace = the trace's position)."""
    return [row for i, trace in enumerate(traces) for row in trace_rows(trace, i, merge)]


def token_weights(rows: Sequence[PolicyRow], aggregation: str = "trace_mean", constant: float = 200.0,
                  micro_batches: int = 1) -> list[float]:
    """Per row, the weight of each of its loss tokens.

    trace_mean: ``1 / (n_traces * |T_trace|)`` where ``|T_trace|`` counts the loss tokens of all rows of the row's
    trace (the mean over traces of each trace's mean token loss); token_mean: ``1 / n_tokens``; constant:
    ``1 / (constant * micro_batches)`` (each micro-batch's token losses summed and divided by the constant, the
    micro-batches of an update averaged: the official code's loss)."""
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")
    per_trace: dict[int, int] = {}
    for row in rows:
        per_trace[row.trace] = per_trace.get(row.trace, 0) + row.num_loss_tokens
    if any(count == 0 for count in per_trace.values()):
        raise ValueError("a trace has no loss tokens")
    if aggregation == "constant":
        return [1.0 / (constant * micro_batches)] * len(rows)
    if aggregation == "token_mean":
        return [1.0 / sum(per_trace.values())] * len(rows)
    return [1.0 / (len(per_trace) * per_trace[row.trace]) for row in rows]


def kl_in_advantages(advantages: torch.Tensor, kl: torch.Tensor, loss_mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token advantages with the KL as a reward (the official compute_reward + cumulative returns, gamma 1):
    ``A_t - kl_coef * sum of k3 from t to the end of t's turn``. advantages / kl: [N] over the loss tokens of a
    collated batch in row-major order; loss_mask: [rows, width] (each run of ones is one turn)."""
    out = advantages.clone()
    offset = 0
    for row in loss_mask.bool():
        for start, end in _runs(row):
            n = end - start
            segment = kl[offset : offset + n]
            out[offset : offset + n] -= kl_coef * torch.flip(torch.cumsum(torch.flip(segment, [0]), 0), [0])
            offset += n
    if offset != kl.numel():
        raise ValueError(f"loss mask holds {offset} tokens, kl {kl.numel()}")
    return out


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.long), mask.long(), torch.zeros(1, dtype=torch.long)])
    edges = torch.diff(padded)
    return list(zip(torch.nonzero(edges == 1).flatten().tolist(), torch.nonzero(edges == -1).flatten().tolist()))


# ---------------------------------------------------------------------------------------------------- batches


class PolicyRowCollator:
    """Pads rows (right) into a model batch: ``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
    ``pixel_values`` / ``image_grid_thw`` (every image of every row, in token order), the same for videos,
    ``loss_mask`` and
    ``token_rows`` (the row of each loss token, in the row-major order :func:`token_logprobs` returns them)."""

    def __init__(self, processor: Any):
        self.processor = processor
        tokenizer = processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Qwen2.5-VL places video frames in time (second_per_grid_ts); Qwen2-VL by frame index.
        self.video_seconds = "second_per_grid_ts" in getattr(processor, "model_input_names", [])

    def __call__(self, rows: Sequence[PolicyRow]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("no rows to collate")
        width = max(len(row.input_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            if len(row.loss_mask) != len(row.input_ids) or row.loss_mask[0]:
                raise ValueError(f"row {r} (trace {row.trace}): loss mask must match the ids and start with context")
            n = len(row.input_ids)
            input_ids[r, :n] = torch.tensor(row.input_ids)
            attention[r, :n] = 1
            loss_mask[r, :n] = torch.tensor(row.loss_mask)
        batch: dict[str, torch.Tensor] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "mm_token_type_ids": torch.tensor(self.processor.create_mm_token_type_ids(input_ids.tolist())),
            "loss_mask": loss_mask,
            "token_rows": torch.arange(len(rows)).repeat_interleave(loss_mask.sum(dim=1)),
        }
        images = [image for row in rows for image in row.images]
        if images:
            out = self.processor.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
            recorded = torch.tensor([grid for row in rows for grid in row.image_grid_thw], dtype=torch.long)
            if not torch.equal(out["image_grid_thw"].long(), recorded):
                raise ValueError(
                    "the processor gives other image grids than the rollout recorded (image processor settings differ "
                    "between rollout and training)"
                )
            batch["pixel_values"] = out["pixel_values"]
            batch["image_grid_thw"] = out["image_grid_thw"]
        videos = [video for row in rows for video in row.videos]
        if videos:
            clips = [np.stack([np.asarray(f.convert("RGB")) for f in video]) for video in videos]
            out = self.processor.video_processor(videos=clips, return_tensors="pt")
            recorded = torch.tensor([grid for row in rows for grid in row.video_grid_thw], dtype=torch.long)
            if not torch.equal(out["video_grid_thw"].long(), recorded):
                raise ValueError("the processor gives other video grids than the rollout recorded")
            batch["pixel_values_videos"] = out["pixel_values_videos"]
            batch["video_grid_thw"] = out["video_grid_thw"]
            if self.video_seconds:
                batch["second_per_grid_ts"] = torch.tensor([s for row in rows for s in row.video_seconds])
        return batch


def token_logprobs(
    model: Any,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N] of the N loss tokens of a collated batch (row-major order) under ``model``, from logits
    divided by the sampling temperature, and their entropies [N] if asked (without gradient unless
    ``entropy_grad``: an entropy that is only logged keeps no softmax for the backward pass).

    Logits are computed only at the positions that predict a loss token (``logits_to_keep`` as a boolean mask), so
    the [L, vocab] logits of long multimodal contexts are never built; log-probs come from a gather minus the
    log-partition, without a second [N, vocab] tensor."""
    loss_mask = batch["loss_mask"].bool()
    keep = torch.zeros_like(loss_mask)
    keep[:, :-1] = loss_mask[:, 1:]  # the logits at t predict the token at t + 1
    inputs = {k: v for k, v in batch.items() if k not in ("loss_mask", "token_rows")}
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in inputs.items()}, logits_to_keep=keep.to(device), use_cache=False)
    logits = out.logits.float().reshape(-1, out.logits.shape[-1]) / temperature
    targets = batch["input_ids"][loss_mask].to(device)
    if logits.shape[0] != targets.shape[0]:
        raise RuntimeError(f"the model returned {logits.shape[0]} logit rows for {targets.shape[0]} loss tokens")
    log_partition = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_partition
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = log_partition - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


# ------------------------------------------------------------------------------------------------------- loss


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(d) - d - 1`` with ``d = ref_logp - logp``."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


@dataclass
class TokenLoss:
    """Per-token terms of the objective (shape [N]); ``loss`` is what gets weighted and summed."""

    loss: torch.Tensor
    ratio: torch.Tensor
    low_clipped: torch.Tensor  # bool: ratio below 1 - clip_low with a negative advantage (no gradient)
    high_clipped: torch.Tensor  # bool: ratio above 1 + clip_high with a positive advantage (no gradient)
    kl: torch.Tensor | None
    entropy: torch.Tensor | None


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    config: GRPOLossConfig,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> TokenLoss:
    """Per-token clipped surrogate (+ KL penalty with ``kl_in="loss"``) - entropy bonus (formulas in the module
    docstring). ``advantages`` holds each token's advantage (with ``kl_in="reward"`` already lowered by the KL:
    :func:`kl_in_advantages`); ``ref_logp`` is required for a KL loss term and ``entropy`` (with gradient) when
    ``entropy_coef > 0``. The returned ``kl`` is the k3 of the current policy, for logging."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        if config.kl_in == "loss":
            loss = loss + config.kl_coef * kl
    elif config.kl_coef > 0 and config.kl_in == "loss":
        raise ValueError("kl_coef > 0 needs the reference log-probs")
    if config.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the token entropies")
        loss = loss - config.entropy_coef * entropy
    return TokenLoss(
        loss=loss,
        ratio=ratio,
        low_clipped=(ratio < 1.0 - config.clip_low) & (advantages < 0),
        high_clipped=(ratio > 1.0 + config.clip_high) & (advantages > 0),
        kl=kl,
        entropy=entropy,
    )
