"""BaseReward's head: a two-layer MLP on the last real token's hidden state."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mmreward.heads.base import HeadError, RewardHead, register_head


@register_head("scalar")
class ScalarHead(RewardHead):
    """`Linear(H, d) -> SiLU -> Linear(d, k)` at the last real token.

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
        self.check_hidden(hidden)
        hidden = hidden[:, 0].to(self.proj.weight.dtype)
        return self.out(self.act(self.proj(hidden)))
