"""Reward head registry and the scalar head (exact values)."""

import math

import pytest
import torch

from mmreward.heads import HEADS, HeadError, RewardHead, ScalarHead, build_head, head_from_config, register_head
from mmreward.losses import PreferenceLossConfig, preference_loss


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def test_scalar_head_exact_value():
    head = build_head("scalar", hidden_size=2, dimensions=["overall"], inner_dim=2)
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(2))
        head.proj.bias.copy_(torch.tensor([0.0, -1.0]))
        head.out.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.out.bias.copy_(torch.tensor([0.5]))
    out = head(torch.tensor([[1.0, 2.0], [0.0, 0.0]])[:, None])
    expected = [_silu(1.0) - 2 * _silu(1.0) + 0.5, _silu(0.0) - 2 * _silu(-1.0) + 0.5]
    assert out.shape == (2, 1)
    assert out[:, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_scalar_head_shapes_dims_and_dtype():
    head = build_head("scalar", 8, ["VQ", "MQ", "TA"], inner_dim=4)
    assert head.num_dimensions == 3 and head.inner_dim == 4
    assert [p.shape for p in head.parameters()] == [(4, 8), (4,), (3, 4), (3,)]
    out = head(torch.randn(5, 1, 8, dtype=torch.bfloat16))
    assert out.shape == (5, 3) and out.dtype == torch.float32  # head computes in fp32
    assert build_head("scalar", 8, ["overall"]).inner_dim == 8  # default d = H
    with pytest.raises(HeadError, match=r"expected hidden \[N, 1, 8\]"):
        head(torch.randn(5, 1, 7))
    with pytest.raises(HeadError, match=r"expected hidden \[N, 1, 8\]"):
        head(torch.randn(5, 8))


def test_scalar_head_starts_near_zero():
    torch.manual_seed(0)
    head = build_head("scalar", 64, ["overall"])
    out = head(torch.randn(32, 1, 64))
    assert out.abs().max() < 0.2  # small init: initial BT loss ~ log 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_size=8, dimensions=[]), "at least one dimension"),
        (dict(hidden_size=8, dimensions=["a", "a"]), "duplicate"),
        (dict(hidden_size=0, dimensions=["a"]), "hidden_size must be positive"),
        (dict(hidden_size=8, dimensions=["a"], inner_dim=0), "inner_dim must be positive"),
        (dict(hidden_size=8, dimensions=["a"], nonsense=1), "invalid options"),
    ],
)
def test_bad_head_configs(kwargs, match):
    with pytest.raises(HeadError, match=match):
        build_head("scalar", **kwargs)


def test_unknown_head_lists_registered():
    with pytest.raises(HeadError, match=r"unknown head 'nope'.*'scalar'"):
        build_head("nope", 8, ["overall"])


def test_config_round_trip():
    head = build_head("scalar", 16, ["VQ", "TA"], inner_dim=6, init_std=0.1)
    config = head.config()
    assert config == {
        "name": "scalar",
        "hidden_size": 16,
        "dimensions": ["VQ", "TA"],
        "options": {"inner_dim": 6, "init_std": 0.1},
    }
    rebuilt = head_from_config(config)
    assert isinstance(rebuilt, ScalarHead) and rebuilt.config() == config
    with pytest.raises(HeadError, match="lacks"):
        head_from_config({"name": "scalar"})


def test_default_pair_loss_is_preference_loss():
    head = build_head("scalar", 4, ["VQ", "TA"])
    r_a, r_b = torch.tensor([[1.0, 0.0], [0.5, -1.0]]), torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    labels, mask = torch.tensor([[1, 0], [-1, 1]]), torch.tensor([[1, 1], [1, 0]])
    cfg = PreferenceLossConfig(kind="btt")
    loss, stats = head.pair_loss(r_a, r_b, labels, mask, cfg)
    ref, ref_stats = preference_loss(r_a, r_b, labels, mask, cfg)
    assert loss.item() == pytest.approx(ref.item())
    assert torch.equal(stats["count"], ref_stats["count"])


def test_register_new_head_kind():
    """A head registered elsewhere (e.g. yes_token) is built and rebuilt by name like `scalar`."""

    @register_head("test_constant")
    class ConstantHead(RewardHead):
        uses_lm_head = True

        def __init__(self, hidden_size, dimensions, value: float = 1.0):
            super().__init__(hidden_size, dimensions)
            self.value = value

        def options(self):
            return {"value": self.value}

        def forward(self, hidden, lm_head=None):
            return torch.full((hidden.shape[0], self.num_dimensions), self.value)

    try:
        head = head_from_config(build_head("test_constant", 4, ["overall"], value=2.5).config())
        assert isinstance(head, ConstantHead) and head.uses_lm_head and head.name == "test_constant"
        assert head(torch.zeros(3, 1, 4)).tolist() == [[2.5]] * 3
        with pytest.raises(HeadError, match="already registered"):
            register_head("test_constant")(type("Other", (RewardHead,), {}))
    finally:
        HEADS.pop("test_constant", None)
