"""Pairwise preference losses for scalar reward models.

All losses work on per-dimension rewards ``r_a, r_b`` of shape ``[B, k]`` (one column per
dimension, e.g. VQ / MQ / TA / overall), labels of the same shape in ``{1: a better,
-1: b better, 0: tie}`` and an optional mask marking which labels exist (1) or are missing (0).

Bradley-Terry (``kind="bt"``)::

    loss = -log sigmoid(r_w - r_l - margin)            # decisive pairs only; ties carry no signal

Bradley-Terry with ties (``kind="btt"``), the Rao-Kupper model used by VideoAlign/VideoReward
(Liu et al. 2025, "Improving Video Generation with Human Feedback", arXiv:2501.13918; their
training code, ``VideoVLMRewardTrainer`` with ``loss_type="btt"``, fixes the tie parameter at 5).
With ``d = r_a - r_b`` and a tie parameter ``theta > 1``::

    P(a > b) = sigmoid(d - log theta)
    P(b > a) = sigmoid(-d - log theta)
    P(tie)   = (theta^2 - 1) * sigmoid(d - log theta) * sigmoid(-d - log theta)

The three probabilities sum to one (Rao & Kupper 1967). Decisive pairs minimise
``-log P(winner)`` (with the optional margin added to ``log theta``), tied pairs minimise
``-log P(tie)``, which pulls their rewards together.

Reward centering adds ``center_coef * mean((r_a + r_b)^2)``, which keeps the (shift-invariant)
preference loss from letting rewards drift (the auxiliary term of Eisenstein et al. 2023, TRL's
``center_rewards_coefficient``). It is off by default: the BaseReward paper's ablation found such
regularisation (zero-mean rewards, length normalisation) unnecessary, and its recipe trains with
the plain Bradley-Terry loss.

Every term is a mean over the entries that take part (mask = 1, and for BT a decisive label),
so a batch where a dimension is unlabeled neither contributes to nor dilutes that loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_KINDS = ("bt", "btt")


@dataclass
class PreferenceLossConfig:
    """Settings of :func:`preference_loss`.

    Attributes:
        kind: ``"bt"`` (Bradley-Terry; tie labels are ignored) or ``"btt"`` (Bradley-Terry with
            ties, Rao-Kupper; tie labels are trained to give equal rewards).
        margin: subtracted from the winner's reward difference on decisive pairs
            (``-log sigmoid(r_w - r_l - margin)``); 0 disables it.
        tie_theta: the Rao-Kupper tie parameter ``theta > 1`` of ``"btt"``; larger values make
            ties more probable for a given reward difference. VideoAlign uses 5.
        center_coef: weight of the reward-centering penalty ``mean((r_a + r_b)^2)``; 0 disables it.
    """

    kind: str = "bt"
    margin: float = 0.0
    tie_theta: float = 5.0
    center_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"PreferenceLossConfig.kind must be one of {LOSS_KINDS}, got {self.kind!r}")
        if not math.isfinite(self.margin):
            raise ValueError(f"PreferenceLossConfig.margin must be finite, got {self.margin}")
        if not (math.isfinite(self.tie_theta) and self.tie_theta > 1.0):
            raise ValueError(f"PreferenceLossConfig.tie_theta must be a finite number > 1, got {self.tie_theta}")
        if not (math.isfinite(self.center_coef) and self.center_coef >= 0.0):
            raise ValueError(f"PreferenceLossConfig.center_coef must be finite and >= 0, got {self.center_coef}")


def rao_kupper_probs(delta: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P(a > b), P(b > a), P(tie))`` of the Rao-Kupper model for ``delta = r_a - r_b``."""
    log_theta = math.log(theta)
    p_a = torch.sigmoid(delta - log_theta)
    p_b = torch.sigmoid(-delta - log_theta)
    return p_a, p_b, (theta**2 - 1.0) * p_a * p_b


def _check_inputs(
    r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if r_a.dim() != 2 or r_a.shape != r_b.shape:
        raise ValueError(f"r_a and r_b must both have shape [B, k]; got {tuple(r_a.shape)} and {tuple(r_b.shape)}")
    if labels.shape != r_a.shape:
        raise ValueError(f"labels must have the rewards' shape {tuple(r_a.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be integers in {1, -1, 0}")
    if not torch.isin(labels.long(), torch.tensor([-1, 0, 1], device=labels.device)).all():
        raise ValueError(f"labels must be in {{1, -1, 0}}, got values {sorted(set(labels.flatten().tolist()))}")
    if mask is None:
        return torch.ones_like(labels, dtype=torch.bool)
    if mask.shape != r_a.shape:
        raise ValueError(f"mask must have the rewards' shape {tuple(r_a.shape)}, got {tuple(mask.shape)}")
    if not torch.isin(mask.long(), torch.tensor([0, 1], device=mask.device)).all():
        raise ValueError("mask must contain only 0/1 (or False/True)")
    return mask.bool()


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Zero (still attached to the graph) when nothing is kept, so a batch without usable labels
    # gives a finite loss and zero gradients instead of NaN.
    weights = keep.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def preference_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    cfg: PreferenceLossConfig | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Preference loss for a batch of pairs.

    Args:
        r_a, r_b: rewards of the two sides, ``[B, k]``.
        labels: ``[B, k]`` integers, 1 = a better, -1 = b better, 0 = tie.
        mask: ``[B, k]`` 0/1, 0 where the dimension has no label for that pair; None = all labeled.
        cfg: loss settings (defaults to plain Bradley-Terry).

    Returns:
        ``(loss, stats)``: the scalar loss to minimise (computed in at least float32) and detached
        statistics for logging: ``pref_loss`` and ``center_penalty`` (scalars), ``accuracy``
        (``[k]``, fraction of decisive labeled pairs whose reward difference has the label's sign;
        a difference of 0 counts as wrong; NaN for a dimension without such pairs) and ``count``
        (``[k]``, those pairs' number).
    """
    cfg = cfg or PreferenceLossConfig()
    keep = _check_inputs(r_a, r_b, labels, mask)
    # log-sigmoids of small differences lose most of their precision in bf16/fp16.
    dtype = torch.promote_types(torch.promote_types(r_a.dtype, r_b.dtype), torch.float32)
    r_a, r_b, labels = r_a.to(dtype), r_b.to(dtype), labels.to(dtype)
    delta = r_a - r_b
    decisive = keep & (labels != 0)
    # Reward difference in favour of the labeled winner (sign is irrelevant for ties).
    won_by = delta * labels

    if cfg.kind == "bt":
        pref = _masked_mean(-F.logsigmoid(won_by - cfg.margin), decisive)
    else:
        log_theta = math.log(cfg.tie_theta)
        decisive_term = -F.logsigmoid(won_by - log_theta - cfg.margin)
        tie_term = -(
            F.logsigmoid(delta - log_theta)
            + F.logsigmoid(-delta - log_theta)
            + math.log(cfg.tie_theta**2 - 1.0)
        )
        pref = _masked_mean(torch.where(labels != 0, decisive_term, tie_term), keep)

    center = _masked_mean((r_a + r_b) ** 2, keep)
    loss = pref + cfg.center_coef * center

    with torch.no_grad():
        count = decisive.sum(dim=0)
        correct = ((won_by > 0) & decisive).sum(dim=0)
        accuracy = torch.where(count > 0, correct.to(r_a.dtype) / count.clamp(min=1), torch.nan)
    stats = {
        "pref_loss": pref.detach(),
        "center_penalty": center.detach(),
        "accuracy": accuracy.detach(),
        "count": count.detach(),
    }
    return loss, stats


def stats_to_log(stats: dict[str, torch.Tensor], dims: list[str]) -> dict[str, float]:
    """Flatten :func:`preference_loss` stats into ``{name: float}`` with one accuracy per named dim."""
    if len(dims) != stats["accuracy"].numel():
        raise ValueError(f"got {len(dims)} dimension names for {stats['accuracy'].numel()} reward dimensions")
    out = {"pref_loss": float(stats["pref_loss"]), "center_penalty": float(stats["center_penalty"])}
    for name, acc, n in zip(dims, stats["accuracy"].tolist(), stats["count"].tolist()):
        if n > 0:
            out[f"accuracy/{name}"] = acc
    return out
