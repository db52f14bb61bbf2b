"""RewardDance's generative reward: the probability that the VLM answers "yes".

No new weights: the backbone's own LM head is read at the verdict position (the first token the
model would write after the question; see `mmreward.yes_token_prompts` for the prompts and read
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

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmreward.heads import HeadError, RewardHead, register_head
from mmreward.losses import PreferenceLossConfig, preference_loss

PROBABILITY_MODES = ("softmax", "binary")
FORMS = ("pointwise", "pairwise")
REASONING_MODES = ("none", "verdict_first", "rationale_first")
DEFAULT_INSTRUCTIONS = {
    "none": "Answer yes or no.",
    "verdict_first": "Answer yes or no first, then explain your answer in one sentence.",
    "rationale_first": 'Explain your reasoning in one sentence, then finish with "Answer: yes" or "Answer: no".',
}


@dataclass
class YesTokenConfig:
    """Options of the `yes_token` head (all recorded in the checkpoint, so a saved model knows how
    to prompt itself).

    probability: "softmax" (P(yes) over the full vocabulary) or "binary" (sigmoid(logit_yes - logit_no)).
    yes_words / no_words: spellings whose probabilities are summed; each must be one token of the
        backbone's tokenizer (checked when the head meets the processor).
    form: "pointwise" (does this candidate match the prompt?) or "pairwise" (is the second,
        candidate, better than the first, a reference?). Training pairs give both orders: side a is
        judged against b as reference and side b against a.
    reasoning: "none"; "verdict_first" (the model answers, then explains: the reward is read at the
        verdict, the first answer token); "rationale_first" (the model explains, then writes
        `verdict_prefix` and the verdict: the reward is read after the generated rationale).
    pointwise_question / pairwise_question: question about media candidates; `{prompt}` and
        `{media}` ("image", "images" or "video") are filled in.
    pointwise_response_question / pairwise_response_question: the same for text responses;
        `{prompt}`, `{response}` (the candidate) and `{reference}` (pairwise) are filled in.
    instruction: answer-format sentence after the question; None = the default of `reasoning`.
    verdict_prefix: text before the verdict in "rationale_first" (the reward is read right after it).
    ce_weight: weight of the yes/no cross-entropy.
    bt_weight: weight of the Bradley-Terry term on the two sides' log-odds (0 = off).
    tie_target: CE target P(yes) for both sides of a tied pair (e.g. 0.5); None = ties give no CE.
    """

    probability: str = "softmax"
    yes_words: list[str] = field(default_factory=lambda: ["yes", " yes", "Yes", " Yes"])
    no_words: list[str] = field(default_factory=lambda: ["no", " no", "No", " No"])
    form: str = "pointwise"
    reasoning: str = "none"
    pointwise_question: str = 'Does this {media} match the prompt "{prompt}"?'
    pairwise_question: str = (
        'Both {media}s were made for the prompt "{prompt}". The first is a reference, the second a candidate. '
        "Is the second {media} better than the first?"
    )
    pointwise_response_question: str = "Question: {prompt}\nResponse: {response}\nIs this response correct and helpful?"
    pairwise_response_question: str = (
        "Question: {prompt}\nFirst response: {reference}\nSecond response: {response}\n"
        "Is the second response better than the first?"
    )
    instruction: str | None = None
    verdict_prefix: str = "Answer:"
    ce_weight: float = 1.0
    bt_weight: float = 0.0
    tie_target: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.probability not in PROBABILITY_MODES:
            problems.append(f"probability must be one of {PROBABILITY_MODES}, got {self.probability!r}")
        if self.form not in FORMS:
            problems.append(f"form must be one of {FORMS}, got {self.form!r}")
        if self.reasoning not in REASONING_MODES:
            problems.append(f"reasoning must be one of {REASONING_MODES}, got {self.reasoning!r}")
        self.yes_words, self.no_words = list(self.yes_words), list(self.no_words)
        if not self.yes_words or not self.no_words:
            problems.append("yes_words and no_words need at least one spelling each")
        if set(self.yes_words) & set(self.no_words):
            problems.append(f"a spelling is both yes and no: {sorted(set(self.yes_words) & set(self.no_words))}")
        for name, needed in (("pointwise_question", ("prompt",)), ("pairwise_question", ("prompt",)),
                             ("pointwise_response_question", ("prompt", "response")),
                             ("pairwise_response_question", ("prompt", "response", "reference"))):
            template = getattr(self, name)
            missing = [key for key in needed if "{" + key + "}" not in template]
            if missing:
                problems.append(f"{name} must contain {['{' + k + '}' for k in missing]}")
            try:  # other fields ({media}) or stray braces would only fail when the first batch is encoded
                template.format(prompt="", response="", reference="", media="")
            except (KeyError, IndexError, ValueError) as err:
                problems.append(f"{name}: bad template {template!r} ({err!r})")
        if self.reasoning == "rationale_first" and not self.verdict_prefix.strip():
            problems.append("rationale_first needs a non-empty verdict_prefix (the reward is read after it)")
        if self.ce_weight < 0 or self.bt_weight < 0 or self.ce_weight + self.bt_weight == 0:
            problems.append(f"ce_weight and bt_weight must be >= 0 and not both 0, "
                            f"got {self.ce_weight}, {self.bt_weight}")
        if self.tie_target is not None and not 0.0 <= self.tie_target <= 1.0:
            problems.append(f"tie_target must be in [0, 1] or None, got {self.tie_target}")
        if problems:
            raise HeadError("head 'yes_token': " + "; ".join(problems))

    def answer_instruction(self) -> str:
        return self.instruction if self.instruction is not None else DEFAULT_INSTRUCTIONS[self.reasoning]


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

    `forward(hidden [N, H], lm_head)` returns the verdict log-odds `[N, 1]`; `to_reward` gives P(yes).
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
        if hidden.ndim != 2 or hidden.shape[-1] != self.hidden_size:
            raise HeadError(f"head 'yes_token': expected hidden [B, {self.hidden_size}], got {tuple(hidden.shape)}")
        logits = lm_head(hidden)
        return verdict_log_odds(logits, self.yes_ids, self.no_ids, self.cfg.probability)[:, None]

    def to_reward(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)

    def pair_loss(self, r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                  loss_cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return yes_token_loss(r_a, r_b, labels, mask, self.cfg, loss_cfg)

    def pair_collator(self, processor: Any, cfg: Any) -> Any:
        from mmreward.yes_token_prompts import YesTokenCollator  # prompts import collate/data; keep heads light

        return YesTokenCollator(processor, self.dimensions, self.cfg, cfg)

    def encode_sides(self, processor: Any, prompts: Any, sides: Any, cfg: Any) -> dict[str, torch.Tensor]:
        """Pointwise queries for each (prompt, side); the other forms need more than one side."""
        from mmreward.yes_token_prompts import VerdictQuery, encode_queries

        if self.cfg.form != "pointwise" or self.cfg.reasoning == "rationale_first":
            raise HeadError(
                f"head 'yes_token' with form={self.cfg.form!r}, reasoning={self.cfg.reasoning!r} cannot score sides "
                "one by one (a reference or a generated rationale is needed): use "
                "mmreward.yes_token_scoring.YesTokenScorer or YesTokenRewardFunction"
            )
        if len(prompts) != len(sides):
            raise ValueError(f"{len(prompts)} prompts for {len(sides)} sides")
        queries = [VerdictQuery(cfg.prompt_template.format(prompt=p), side) for p, side in zip(prompts, sides)]
        return encode_queries(processor, queries, self.cfg, cfg)
