"""RewardDance's generative reward: the probability that the VLM answers "yes".

No new weights: the backbone's own LM head is read at the verdict position (the first token the
model would write after the question; see `mmreward.heads.yes_token.prompts` for the prompts and read
positions). Two ways to turn the next-token logits into P(yes), chosen by `probability`:

    softmax:  P(yes) = sum over the yes spellings of softmax(logits)      (full vocabulary)
    binary:   P(yes) = sigmoid(logit_yes - logit_no)                      (yes against no only)

Several spellings ("yes", " yes", "Yes", " Yes") count as one answer: their probabilities add up,
i.e. `logit_yes = logsumexp(logits[yes ids])` (likewise for no).

The head's `forward` returns the verdict's log-odds `s = log P(yes) - log(1 - P(yes))`, so
`P(yes) = sigmoid(s)` exactly in both modes; `to_reward` (used by `RewardModel.score`) applies
the sigmoid. Training works on `s` because log-odds do not saturate: a confident model's P(yes)
rounds to 1.0 in float32 and would make `log(1 - P)` infinite.

Training (`yes_token_loss`): binary cross-entropy on the verdict, the preferred side's target
"yes" and the other side's "no" (ties: `tie_target`, or no CE signal), plus optionally a
Bradley-Terry term on the log-odds of the two sides (`mmreward.losses.preference_loss` with the
trainer's loss settings). With `probability="binary"` the CE is exactly the token cross-entropy
over {yes, no}; with "softmax" the "yes" target is exactly the full-vocabulary token CE and the
"no" target pushes probability off the yes spellings, i.e. `-log(1 - P(yes))`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmreward.heads.base import HeadError, RewardHead, register_head
from mmreward.heads.yes_token.config import PROBABILITY_MODES, YesTokenConfig
from mmreward.heads.yes_token.prompts import VerdictQuery, YesTokenCollator, encode_queries
from mmreward.losses import PreferenceLossConfig, preference_loss


def single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The token id of each word; a HeadError names any word that is not exactly one token."""
    ids, bad = [], {}
    for word in words:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            bad[word] = tokens
        else:
            ids.append(int(tokens[0]))
    if bad:
        raise HeadError(f"head 'yes_token': verdict spellings must be single tokens of the tokenizer; not: {bad}")
    return ids


def verdict_log_odds(logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int],
                     probability: str) -> torch.Tensor:
    """`log P(yes) - log(1 - P(yes))` per row of next-token logits `[N, V]` (float32 or wider).

    softmax: P(yes) = sum_yes softmax(logits), so 1 - P(yes) is the mass of every other token;
    binary: P(yes) = sigmoid(lse(logits[yes]) - lse(logits[no])).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    yes = torch.as_tensor(list(yes_ids), device=logits.device, dtype=torch.long)
    log_yes = torch.logsumexp(logits.index_select(1, yes), dim=1)
    if probability == "binary":
        no = torch.as_tensor(list(no_ids), device=logits.device, dtype=torch.long)
        return log_yes - torch.logsumexp(logits.index_select(1, no), dim=1)
    if probability != "softmax":
        raise ValueError(f"probability must be one of {PROBABILITY_MODES}, got {probability!r}")
    others = logits.index_fill(1, yes, float("-inf"))
    return log_yes - torch.logsumexp(others, dim=1)


def verdict_targets(labels: torch.Tensor, tie_target: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE targets P(yes) of the a and b sides and which labels carry CE signal, from labels a=1/b=-1/tie=0."""
    labels = labels.to(torch.float32)
    target_a = (labels > 0).to(torch.float32)
    target_b = (labels < 0).to(torch.float32)
    has_signal = labels != 0
    if tie_target is not None:
        tie = labels == 0
        target_a = torch.where(tie, torch.full_like(target_a, tie_target), target_a)
        target_b = torch.where(tie, torch.full_like(target_b, tie_target), target_b)
        has_signal = torch.ones_like(has_signal)
    return target_a, target_b, has_signal


def yes_token_loss(
    s_a: torch.Tensor,
    s_b: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    cfg: YesTokenConfig,
    bt_cfg: PreferenceLossConfig | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`ce_weight * CE + bt_weight * BT` for the verdict log-odds `s_a, s_b` `[P, k]` of a pair batch.

    CE is the mean binary cross-entropy with logits over every side that carries a target (both
    sides of each labeled decisive pair; tied pairs too when `cfg.tie_target` is set). BT is
    `preference_loss(s_a, s_b, labels, mask, bt_cfg)`. Stats: `preference_loss`'s (`accuracy`,
    `count`, ...) plus `ce_loss`, `bt_loss` and `verdict_accuracy` (fraction of decisive sides whose
    verdict, s > 0 for yes, is the target).
    """
    bt_loss, stats = preference_loss(s_a, s_b, labels, mask, bt_cfg)  # also validates the inputs
    keep = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    dtype = torch.promote_types(s_a.dtype, torch.float32)
    target_a, target_b, has_signal = verdict_targets(labels, cfg.tie_target)
    use = (keep & has_signal).to(dtype)
    ce_a = F.binary_cross_entropy_with_logits(s_a.to(dtype), target_a.to(dtype), reduction="none")
    ce_b = F.binary_cross_entropy_with_logits(s_b.to(dtype), target_b.to(dtype), reduction="none")
    ce = ((ce_a + ce_b) * use).sum() / (2 * use.sum()).clamp(min=1.0)
    loss = cfg.ce_weight * ce
    if cfg.bt_weight > 0:
        loss = loss + cfg.bt_weight * bt_loss
    with torch.no_grad():
        decisive = keep & (labels != 0)
        sides_right = (((s_a > 0) == (labels > 0)).long() + ((s_b > 0) == (labels < 0)).long()) * decisive
        n = decisive.sum()
        stats.update(
            ce_loss=ce.detach(),
            bt_loss=bt_loss.detach(),
            verdict_accuracy=sides_right.sum() / (2 * n) if n > 0 else torch.tensor(float("nan")),
        )
    return loss, stats


@register_head("yes_token")
class YesTokenHead(RewardHead):
    """Reward = P(yes) read from the backbone's LM head at the verdict position (no own weights).

    `forward(hidden [N, 1, H], lm_head)` returns the verdict log-odds `[N, 1]`; `to_reward` gives P(yes).
    One verdict per sequence, so the head has exactly one dimension. The verdict token ids come from
    the backbone's tokenizer (`bind_processor`, called by `RewardModel`).
    """

    uses_lm_head = True

    def __init__(self, hidden_size: int, dimensions: Sequence[str], **options: Any):
        super().__init__(hidden_size, dimensions)
        if self.num_dimensions != 1:
            raise HeadError(
                f"head 'yes_token' reads one yes/no verdict per sequence, so it takes one dimension "
                f"(e.g. overall or TA), got {self.dimensions}"
            )
        self.cfg = YesTokenConfig(**options)
        self.yes_ids: list[int] | None = None
        self.no_ids: list[int] | None = None

    def options(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def bind_processor(self, processor: Any) -> None:
        tokenizer = getattr(processor, "tokenizer", processor)
        self.yes_ids = single_token_ids(tokenizer, self.cfg.yes_words)
        self.no_ids = single_token_ids(tokenizer, self.cfg.no_words)
        if set(self.yes_ids) & set(self.no_ids):
            shared = set(self.yes_ids) & set(self.no_ids)
            raise HeadError(f"head 'yes_token': yes and no spellings share token ids {sorted(shared)}")

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module | None = None) -> torch.Tensor:
        if lm_head is None:
            raise HeadError("head 'yes_token' needs the backbone's LM head (lm_head=None given)")
        if self.yes_ids is None or self.no_ids is None:
            raise HeadError("head 'yes_token' has no verdict token ids yet: call bind_processor(processor) "
                            "(RewardModel does this when it is given a processor)")
        self.check_hidden(hidden)
        logits = lm_head(hidden[:, 0])
        return verdict_log_odds(logits, self.yes_ids, self.no_ids, self.cfg.probability)[:, None]

    def to_reward(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)

    def pair_loss(self, r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                  loss_cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return yes_token_loss(r_a, r_b, labels, mask, self.cfg, loss_cfg)

    def pair_collator(self, processor: Any, cfg: Any) -> Any:
        return YesTokenCollator(processor, self.dimensions, self.cfg, cfg)

    def encode_sides(self, processor: Any, prompts: Any, sides: Any, cfg: Any) -> dict[str, torch.Tensor]:
        """Pointwise queries for each (prompt, side); the other forms need more than one side."""
        if self.cfg.form != "pointwise" or self.cfg.reasoning == "rationale_first":
            raise HeadError(
                f"head 'yes_token' with form={self.cfg.form!r}, reasoning={self.cfg.reasoning!r} cannot score sides "
                "one by one (a reference or a generated rationale is needed): use "
                "mmreward.heads.yes_token.scoring.YesTokenScorer or YesTokenRewardFunction"
            )
        if len(prompts) != len(sides):
            raise ValueError(f"{len(prompts)} prompts for {len(sides)} sides")
        queries = [VerdictQuery(cfg.prompt_template.format(prompt=p), side) for p, side in zip(prompts, sides)]
        return encode_queries(processor, queries, self.cfg, cfg)
