"""Reward heads: one registry shared by every reward model built on a VLM backbone.

A head turns the backbone's final hidden state at the read position (the last non-pad token of each
sequence) into `k` rewards, one per named dimension. Heads are registered by name so that a
checkpoint's config (`head.config()`) is enough to rebuild the head (`head_from_config`).

A new head (e.g. RewardDance's `yes_token`, which reads the LM head instead of owning weights)
subclasses `RewardHead`, sets `uses_lm_head = True` if it needs the backbone's output embeddings,
overrides `pair_loss` if it is not trained with the preference loss, and registers itself with
`@register_head("name")`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn


class HeadError(ValueError):
    """An unknown head name or an invalid head configuration."""


class RewardHead(nn.Module):
    """Base class: maps hidden states `[B, H]` to rewards `[B, k]` (k = len(dimensions))."""

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
        from mmreward.losses import preference_loss  # local import: heads stay importable on their own

        return preference_loss(r_a, r_b, labels, mask, loss_cfg)

    def bind_processor(self, processor: Any) -> None:
        """Called by `RewardModel` with the backbone's processor (a head reading tokens takes their ids here)."""

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


@register_head("scalar")
class ScalarHead(RewardHead):
    """BaseReward's head: `Linear(H, d) -> SiLU -> Linear(d, k)`.

    Weights stay in float32 whatever the backbone's dtype: the hidden state is cast up, so rewards
    and their gradients do not lose precision in a bf16 backbone.
    """

    def __init__(self, hidden_size: int, dimensions: Sequence[str], inner_dim: int | None = None,
                 init_std: float = 0.02):
        super().__init__(hidden_size, dimensions)
        self.inner_dim = int(inner_dim) if inner_dim is not None else self.hidden_size
        if self.inner_dim <= 0:
            raise HeadError(f"head 'scalar': inner_dim must be positive, got {inner_dim}")
        self.init_std = float(init_std)
        self.proj = nn.Linear(self.hidden_size, self.inner_dim)
        self.act = nn.SiLU()
        self.out = nn.Linear(self.inner_dim, self.num_dimensions)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small output weights: every dimension starts near reward 0, so the first steps' loss is ~log 2.
        nn.init.normal_(self.proj.weight, std=self.init_std)
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.out.weight, std=self.init_std)
        nn.init.zeros_(self.out.bias)

    def options(self) -> dict[str, Any]:
        return {"inner_dim": self.inner_dim, "init_std": self.init_std}

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module | None = None) -> torch.Tensor:
        if hidden.ndim != 2 or hidden.shape[-1] != self.hidden_size:
            raise HeadError(f"head 'scalar': expected hidden [B, {self.hidden_size}], got {tuple(hidden.shape)}")
        hidden = hidden.to(self.proj.weight.dtype)
        return self.out(self.act(self.proj(hidden)))


# Heads defined in their own modules register on import; importing them here makes every name buildable.
from mmreward import yes_token  # noqa: E402,F401
