"""The reward-head contract and its registry.

A head turns the backbone's final hidden states at its read positions into `k` rewards, one per
named dimension. Most heads read one position, the last real token of each sequence; VideoAlign's
`reward_token` head reads one special token per dimension. Heads are registered by name so that
a checkpoint's config (`head.config()`) is enough to rebuild the head (`head_from_config`).

A new head subclasses `RewardHead` in its own module under `mmreward/heads/`, registers itself
with `@register_head("name")`, and overrides what differs from the defaults below: `forward`
(always), `read_positions` / `num_reads` (where it reads), `uses_lm_head` (it needs the
backbone's output embeddings), `pair_loss` (not trained with the preference loss), the prompt
(`pair_collator` / `encode_sides`) and `prepare_backbone` (it adds tokens to the vocabulary).
`mmreward/heads/__init__.py` imports the module so the name is buildable.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from mmreward.errors import MmrewardError


class HeadError(MmrewardError, ValueError):
    """An unknown head name or an invalid head configuration."""


class RewardHead(nn.Module):
    """Base class: maps hidden states `[N, num_reads, H]` to rewards `[N, k]` (k = len(dimensions))."""

    name: ClassVar[str] = ""
    # True when `forward` needs the backbone's LM head (passed as `lm_head`).
    uses_lm_head: ClassVar[bool] = False

    def __init__(self, hidden_size: int, dimensions: Sequence[str]):
        super().__init__()
        dims = list(dimensions)
        if not dims:
            raise HeadError(f"head {self.name!r}: at least one dimension is needed")
        if len(set(dims)) != len(dims):
            raise HeadError(f"head {self.name!r}: duplicate dimension names in {dims}")
        if hidden_size <= 0:
            raise HeadError(f"head {self.name!r}: hidden_size must be positive, got {hidden_size}")
        self.hidden_size = int(hidden_size)
        self.dimensions = dims

    @property
    def num_dimensions(self) -> int:
        return len(self.dimensions)

    @property
    def num_reads(self) -> int:
        """Hidden states read per sequence (the width of `read_positions`)."""
        return 1

    def options(self) -> dict[str, Any]:
        """Constructor options beyond hidden_size/dimensions (recorded in the checkpoint config)."""
        return {}

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hidden_size": self.hidden_size,
            "dimensions": list(self.dimensions),
            "options": self.options(),
        }

    def read_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[N, num_reads]` token indices whose final hidden states `forward` reads: the last real token."""
        from mmreward.collate import (
            last_token_index,  # local import: heads stay importable on their own
        )

        return last_token_index(attention_mask)[:, None]

    def check_hidden(self, hidden: torch.Tensor) -> None:
        """Refuse hidden states that are not `[N, num_reads, H]`."""
        if hidden.ndim != 3 or hidden.shape[1:] != (self.num_reads, self.hidden_size):
            raise HeadError(f"head {self.name!r}: expected hidden [N, {self.num_reads}, {self.hidden_size}], "
                            f"got {tuple(hidden.shape)}")

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError

    def pair_loss(
        self,
        r_a: torch.Tensor,
        r_b: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        loss_cfg: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(loss, stats)` for a batch of pairs: rewards `[P, k]`, labels a=1/b=-1/tie=0, 0/1 mask of
        present labels. The default is `mmreward.losses.preference_loss` (BT / BTT, margin, centering)."""
        from mmreward.losses import preference_loss

        return preference_loss(r_a, r_b, labels, mask, loss_cfg)

    def prepare_backbone(self, backbone: nn.Module, processor: Any) -> None:
        """Called once when a new reward model is built on a base backbone, before `bind_processor`
        (the reward_token head adds its tokens to the tokenizer and the embeddings here)."""

    def bind_processor(self, processor: Any) -> None:
        """Called by `RewardModel` with the backbone's processor (a head reading tokens takes their ids here)."""

    def trainable_token_ids(self) -> list[int]:
        """Input-embedding rows that train with the head even when the backbone is frozen or LoRA-tuned
        (the reward_token head's own tokens); every other row keeps its weights."""
        return []

    def to_reward(self, output: torch.Tensor) -> torch.Tensor:
        """The reward `score()` returns from `forward`'s output (identity; yes_token: P(yes) from log-odds)."""
        return output

    def pair_collator(self, processor: Any, cfg: Any) -> Any:
        """The collator that encodes pairs for this head (`collate.PairCollator`; yes_token asks a question)."""
        from mmreward.collate import PairCollator

        return PairCollator(processor, self.dimensions, cfg)

    def encode_sides(self, processor: Any, prompts: Any, sides: Any, cfg: Any) -> dict[str, torch.Tensor]:
        """Inputs that score each side on its own (`collate.encode_sides`; yes_token asks its question)."""
        from mmreward.collate import encode_sides

        return encode_sides(processor, prompts, sides, cfg)


HEADS: dict[str, type[RewardHead]] = {}


def register_head(name: str) -> Callable[[type[RewardHead]], type[RewardHead]]:
    """Class decorator adding a head to the registry under `name`."""

    def decorate(cls: type[RewardHead]) -> type[RewardHead]:
        if name in HEADS and HEADS[name] is not cls:
            raise HeadError(f"head name {name!r} is already registered by {HEADS[name].__qualname__}")
        cls.name = name
        HEADS[name] = cls
        return cls

    return decorate


def build_head(name: str, hidden_size: int, dimensions: Sequence[str], **options: Any) -> RewardHead:
    """Instantiate a registered head."""
    if name not in HEADS:
        raise HeadError(f"unknown head {name!r}; registered heads: {sorted(HEADS)}")
    try:
        return HEADS[name](hidden_size, dimensions, **options)
    except TypeError as err:  # unexpected option names
        raise HeadError(f"head {name!r}: invalid options {sorted(options)} ({err})") from err


def head_from_config(config: dict[str, Any]) -> RewardHead:
    """Rebuild a head from `RewardHead.config()` (weights are loaded separately)."""
    missing = {"name", "hidden_size", "dimensions"} - set(config)
    if missing:
        raise HeadError(f"head config lacks {sorted(missing)}: {config}")
    return build_head(config["name"], config["hidden_size"], config["dimensions"], **config.get("options", {}))
