"""VideoAlign's (VideoReward's) head: one special token per dimension, read where it stands in the prompt.

The prompt holds one special token per dimension (`<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`
by default), each after the text that describes its dimension; the model writes no answer. The
reward of dimension d is a bias-free linear read of the final hidden state at d's token:
`r_d = w_d . h(token_d)` (VideoAlign's `rm_head`, one output per token; with `shared_weights` one
output read at every token). Causal attention means each token sees the media and the text up to
itself, so the prompt decides what each dimension attends to.

The tokens are added to the tokenizer as special tokens when a reward model is first built
(`prepare_backbone`); their input-embedding rows train with the head (`trainable_token_ids`)
whatever the tuning mode, and every other row keeps its weights.

Templates: `template` is inline text with `{prompt}` and every token once, or the name of a text
file in `mmreward/heads/templates/` (see its README for sources), e.g. "videoalign_detailed_special",
VideoAlign's own prompt. Without one, the prompt is the record's prompt followed by one
"<dim>: <token>" line per dimension.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmreward.heads.base import HeadError, RewardHead, register_head

TEMPLATE_DIR = Path(__file__).parent / "templates"
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+$")


def default_token(dimension: str) -> str:
    """VideoAlign's spelling of a dimension's reward token."""
    return f"<|{dimension}_reward|>"


@lru_cache(maxsize=None)
def named_template(name: str) -> str:
    """A template file's text with its prompt placeholder as `{prompt}` (VideoAlign's files say
    `{text_prompt}`, which they fill with `str.format`)."""
    path = TEMPLATE_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise HeadError(f"head 'reward_token': no template named {name!r} (known: {known})")
    return path.read_text(encoding="utf-8").replace("{text_prompt}", "{prompt}")


@register_head("reward_token")
class RewardTokenHead(RewardHead):
    """Rewards read at one special token per dimension: `r_d = w_d . h(token_d)` (module docstring).

    tokens: the special token of each dimension, in dimension order (default `<|{dim}_reward|>`).
    template: prompt text or template name (module docstring); None = prompt + one line per token.
    shared_weights: one output row read at every token (VideoAlign with output_dim 1) instead of one
        row per dimension (its output_dim = number of tokens, the released recipe).
    init_std: standard deviation of the initial weights (small, so rewards start near 0).
    """

    def __init__(self, hidden_size: int, dimensions: Sequence[str], tokens: Sequence[str] | None = None,
                 template: str | None = None, shared_weights: bool = False, init_std: float = 0.02):
        super().__init__(hidden_size, dimensions)
        self.tokens = list(tokens) if tokens is not None else [default_token(d) for d in self.dimensions]
        if len(self.tokens) != self.num_dimensions or len(set(self.tokens)) != len(self.tokens):
            raise HeadError(f"head 'reward_token': needs one distinct token per dimension {self.dimensions}, "
                            f"got {self.tokens}")
        self.template = template
        self.prompt_text = self._resolve_template(template)
        self.shared_weights = bool(shared_weights)
        self.init_std = float(init_std)
        self.proj = nn.Linear(self.hidden_size, 1 if self.shared_weights else self.num_dimensions, bias=False)
        nn.init.normal_(self.proj.weight, std=self.init_std)
        self.token_ids: list[int] | None = None

    def _resolve_template(self, template: str | None) -> str:
        if template is None:
            return "{prompt}\n" + "\n".join(f"{d}: {t}" for d, t in zip(self.dimensions, self.tokens))
        text = named_template(template) if _TEMPLATE_NAME.match(template) else template
        problems = [f"{token!r} appears {text.count(token)} times" for token in self.tokens if text.count(token) != 1]
        if "{prompt}" not in text:
            problems.append("no {prompt} placeholder")
        try:
            text.format(prompt="")
        except (KeyError, IndexError, ValueError) as err:
            problems.append(f"braces other than {{prompt}} ({err!r}; write literal braces as {{{{ }}}})")
        if problems:
            raise HeadError(f"head 'reward_token': bad template {template[:60]!r}...: " + "; ".join(problems))
        return text

    @property
    def num_reads(self) -> int:
        return self.num_dimensions

    def options(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "template": self.template, "shared_weights": self.shared_weights,
                "init_std": self.init_std}

    # ------------------------------------------------------------------------------ tokens

    def prepare_backbone(self, backbone: nn.Module, processor: Any) -> None:
        """Add the tokens to the tokenizer (special, never split) and grow the embeddings if needed."""
        from tokenizers import AddedToken

        tokenizer = processor.tokenizer
        missing = [t for t in self.tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                                 special_tokens=True)
        rows = backbone.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            backbone.resize_token_embeddings(len(tokenizer))

    def bind_processor(self, processor: Any) -> None:
        tokenizer = getattr(processor, "tokenizer", processor)
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.tokens if t not in vocab]
        if missing:
            raise HeadError(f"head 'reward_token': tokens {missing} are not in the tokenizer "
                            "(a new reward model adds them: RewardModel.from_backbone)")
        self.token_ids = [vocab[t] for t in self.tokens]

    def trainable_token_ids(self) -> list[int]:
        if self.token_ids is None:
            raise HeadError("head 'reward_token' has no token ids yet: call bind_processor(processor)")
        return list(self.token_ids)

    # ------------------------------------------------------------------------------ reading

    def read_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[N, k]`: where each dimension's token stands in each row (exactly once per row, or HeadError)."""
        ids = torch.as_tensor(self.trainable_token_ids(), device=input_ids.device)
        hits = (input_ids[:, :, None] == ids) & attention_mask.bool()[:, :, None]  # [N, L, k]
        counts = hits.sum(dim=1)
        if not bool((counts == 1).all()):
            bad = (counts != 1).nonzero().tolist()
            raise HeadError("head 'reward_token': each sequence needs each reward token exactly once; "
                            + ", ".join(f"row {r} has {int(counts[r, j])} x {self.tokens[j]}" for r, j in bad[:5]))
        return hits.to(torch.int8).argmax(dim=1)

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module | None = None) -> torch.Tensor:
        self.check_hidden(hidden)
        out = self.proj(hidden.to(self.proj.weight.dtype))  # [N, k, outputs]
        if self.shared_weights:
            return out[..., 0]
        return out.diagonal(dim1=1, dim2=2)  # token d read by row d

    # ------------------------------------------------------------------------------ prompts

    def collate_config(self, cfg: Any) -> Any:
        """`cfg` with its prompt template wrapped in this head's template (tokens after the prompt text)."""
        from dataclasses import replace

        return replace(cfg, prompt_template=self.prompt_text.replace("{prompt}", cfg.prompt_template))

    def pair_collator(self, processor: Any, cfg: Any) -> Any:
        from mmreward.collate import PairCollator

        return _NoResponses(PairCollator(processor, self.dimensions, self.collate_config(cfg)))

    def encode_sides(self, processor: Any, prompts: Any, sides: Any, cfg: Any) -> dict[str, torch.Tensor]:
        from mmreward.collate import encode_sides

        _refuse_responses(sides)
        return encode_sides(processor, prompts, sides, self.collate_config(cfg))


def _refuse_responses(sides: Sequence[Any], ids: Sequence[Any] | None = None) -> None:
    from mmreward.collate import CollateError

    with_response = [ids[i] if ids else i for i, side in enumerate(sides) if side.response is not None]
    if with_response:
        raise CollateError(f"the reward_token head reads its tokens in the user turn, before any response; "
                           f"it scores media against a prompt, and these have a response: {with_response[:5]}")


class _NoResponses:
    """A `PairCollator` that refuses pairs with responses (see `_refuse_responses`)."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        ids = [ex.record.id for ex in examples]
        _refuse_responses([ex.a for ex in examples] + [ex.b for ex in examples], ids + ids)
        return self.collator(examples)
