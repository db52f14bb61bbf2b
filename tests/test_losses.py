"""Exact-value tests for mmreward.losses (expected numbers worked out by hand in the comments)."""

import math

import pytest
import torch

from mmreward.losses import PreferenceLossConfig, preference_loss, rao_kupper_probs, stats_to_log


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_bt_decisive_pairs():
    # Pair 1: a wins by 1 -> -log sigmoid(1) = log(1 + e^-1) = 0.31326168751822286
    # Pair 2: b wins, r_a - r_b = 1 -> -log sigmoid(-1) = log(1 + e) = 1.3132616875182228
    loss, stats = preference_loss(t([[2.0], [2.0]]), t([[1.0], [1.0]]), torch.tensor([[1], [-1]]))
    assert loss.item() == pytest.approx((0.31326168751822286 + 1.3132616875182228) / 2, abs=1e-12)
    assert stats["accuracy"].tolist() == [0.5]
    assert stats["count"].tolist() == [2]


def test_bt_margin():
    # -log sigmoid(1 - 0.5) = log(1 + e^-0.5) = 0.4740769841801067
    cfg = PreferenceLossConfig(margin=0.5)
    loss, _ = preference_loss(t([[2.0]]), t([[1.0]]), torch.tensor([[1]]), cfg=cfg)
    assert loss.item() == pytest.approx(0.4740769841801067, abs=1e-12)


def test_bt_ignores_ties_and_masked_entries():
    # Only entry (0, 0) counts: a wins by 1 -> 0.31326168751822286.
    r_a = t([[2.0, 9.0], [0.0, -3.0]])
    r_b = t([[1.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([[1, -1], [0, 1]])
    mask = torch.tensor([[1, 0], [1, 0]])
    loss, stats = preference_loss(r_a, r_b, labels, mask)
    assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-12)
    assert stats["count"].tolist() == [1, 0]
    assert stats["accuracy"][0].item() == 1.0
    assert math.isnan(stats["accuracy"][1].item())


def test_btt_decisive_and_tie_terms():
    cfg = PreferenceLossConfig(kind="btt", tie_theta=5.0)
    # Decisive, a wins by 1: -log sigmoid(1 - ln 5) = log(1 + 5/e) = 1.0435917781858577
    loss, _ = preference_loss(t([[1.0]]), t([[0.0]]), torch.tensor([[1]]), cfg=cfg)
    assert loss.item() == pytest.approx(1.0435917781858577, abs=1e-12)
    # Tie with equal rewards: -(2 log sigmoid(-ln 5) + log 24) = 2 log 6 - log 24 = log 1.5
    loss, _ = preference_loss(t([[0.7]]), t([[0.7]]), torch.tensor([[0]]), cfg=cfg)
    assert loss.item() == pytest.approx(math.log(1.5), abs=1e-12)
    # Both in one batch (b wins by 3 -> log(1 + 5 e^-3) = 0.2222914618605358): mean of the two.
    loss, stats = preference_loss(t([[0.0], [0.7]]), t([[3.0], [0.7]]), torch.tensor([[-1], [0]]), cfg=cfg)
    assert loss.item() == pytest.approx((0.2222914618605358 + math.log(1.5)) / 2, abs=1e-12)
    assert stats["count"].tolist() == [1]  # the tie does not count for accuracy


def test_btt_tie_loss_is_smallest_at_equal_rewards():
    cfg = PreferenceLossConfig(kind="btt")
    losses = [preference_loss(t([[d]]), t([[0.0]]), torch.tensor([[0]]), cfg=cfg)[0].item() for d in (-2, -0.5, 0, 0.5, 2)]
    assert losses[2] == min(losses)
    assert losses[1] == pytest.approx(losses[3], abs=1e-12)


def test_btt_loss_is_negative_log_of_rao_kupper_probability():
    delta = t([-3.0, -0.2, 0.0, 1.5, 4.0])
    for theta in (1.5, 5.0):
        p_a, p_b, p_tie = rao_kupper_probs(delta, theta)
        torch.testing.assert_close(p_a + p_b + p_tie, torch.ones_like(delta), rtol=0, atol=1e-12)
        cfg = PreferenceLossConfig(kind="btt", tie_theta=theta)
        for i, d in enumerate(delta.tolist()):
            for label, p in ((1, p_a), (-1, p_b), (0, p_tie)):
                loss, _ = preference_loss(t([[d]]), t([[0.0]]), torch.tensor([[label]]), cfg=cfg)
                assert loss.item() == pytest.approx(-math.log(p[i].item()), abs=1e-10)


def test_reward_centering():
    # BT term log(1 + e^-1) plus 0.1 * mean((r_a + r_b)^2) = 0.1 * ((2 + 1)^2 + (0 + -1)^2) / 2 = 0.5
    cfg = PreferenceLossConfig(center_coef=0.1)
    loss, stats = preference_loss(t([[2.0], [0.0]]), t([[1.0], [-1.0]]), torch.tensor([[1], [1]]), cfg=cfg)
    assert stats["center_penalty"].item() == pytest.approx(5.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.31326168751822286 + 0.5, abs=1e-12)


def test_zero_difference_counts_as_wrong():
    _, stats = preference_loss(t([[1.0, 1.0]]), t([[1.0, 0.0]]), torch.tensor([[1, 1]]))
    assert stats["accuracy"].tolist() == [0.0, 1.0]


def test_per_dimension_masks_route_gradients():
    r_a = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    r_b = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 0], [1, 0]])
    loss, _ = preference_loss(r_a, r_b, torch.tensor([[1, 1], [-1, 1]]), mask)
    loss.backward()
    # Mean of two terms; d/dr of -log sigmoid(r) at 0 is -1/2 and of -log sigmoid(-r) is +1/2,
    # each divided by 2 entries; the unlabeled column gets nothing.
    assert r_a.grad.tolist() == [[-0.25, 0.0], [0.25, 0.0]]


def test_no_usable_labels_gives_zero_loss_and_zero_grad():
    r_a = torch.ones(2, 1, requires_grad=True)
    loss, stats = preference_loss(r_a, torch.zeros(2, 1), torch.tensor([[0], [1]]), torch.tensor([[1], [0]]))
    loss.backward()
    assert loss.item() == 0.0
    assert r_a.grad.abs().sum().item() == 0.0
    assert stats["count"].tolist() == [0]


def test_half_precision_rewards_are_upcast():
    r_a = torch.tensor([[2.0]], dtype=torch.bfloat16, requires_grad=True)
    loss, _ = preference_loss(r_a, torch.tensor([[1.0]], dtype=torch.bfloat16), torch.tensor([[1]]))
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-6)
    assert r_a.grad.dtype == torch.bfloat16


def test_stats_to_log_names_dimensions():
    _, stats = preference_loss(t([[1.0, 0.0]]), t([[0.0, 0.0]]), torch.tensor([[1, 0]]))
    log = stats_to_log(stats, ["VQ", "TA"])
    assert log["accuracy/VQ"] == 1.0
    assert "accuracy/TA" not in log  # no decisive pair in that column
    with pytest.raises(ValueError, match="2 reward dimensions"):
        stats_to_log(stats, ["overall"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "hinge"}, "kind"), ({"tie_theta": 1.0}, "tie_theta"), ({"center_coef": -1.0}, "center_coef"),
     ({"margin": float("nan")}, "margin")],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreferenceLossConfig(**kwargs)


def test_bad_inputs_raise():
    r = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="labels must be in"):
        preference_loss(r, r, torch.tensor([[2], [1]]))
    with pytest.raises(ValueError, match="shape"):
        preference_loss(r, torch.zeros(2, 2), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        preference_loss(r, r, torch.ones(2, 1, dtype=torch.long), torch.full((2, 1), 2))


def test_btt_margin_widens_the_decisive_gap_only():
    # Decisive, a wins by 1, theta 5, margin 0.5: -log sigmoid(1 - ln 5 - 0.5) = log(1 + 5 e^-0.5)
    # = 1.3944245460573657; a margin of the other sign would give log(1 + 5 e^-1.5) = 0.749362472372778.
    cfg = PreferenceLossConfig(kind="btt", tie_theta=5.0, margin=0.5)
    loss, _ = preference_loss(t([[1.0]]), t([[0.0]]), torch.tensor([[1]]), cfg=cfg)
    assert loss.item() == pytest.approx(math.log(1 + 5 * math.exp(-0.5)), abs=1e-12)
    assert loss.item() == pytest.approx(1.3944245460573657, abs=1e-12)
    # b wins by 2 (r_a - r_b = -2): -log sigmoid(2 - ln 5 - 0.5) = log(1 + 5 e^-1.5) (not log(1 + 5 e^-2.5)).
    loss, _ = preference_loss(t([[0.0]]), t([[2.0]]), torch.tensor([[-1]]), cfg=cfg)
    assert loss.item() == pytest.approx(0.749362472372778, abs=1e-12)
    # The tie term does not see the margin: log 1.5 at equal rewards, as without it.
    loss, _ = preference_loss(t([[0.3]]), t([[0.3]]), torch.tensor([[0]]), cfg=cfg)
    assert loss.item() == pytest.approx(math.log(1.5), abs=1e-12)


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_float_labels_must_be_whole_numbers(kind):
    r = torch.zeros(2, 1)
    cfg = PreferenceLossConfig(kind=kind)
    with pytest.raises(ValueError, match="labels must be integers"):
        preference_loss(r, r, torch.tensor([[0.5], [1.0]]), cfg=cfg)
    # Whole-number floats are accepted and mean what the integers mean.
    as_float, _ = preference_loss(t([[1.0], [0.0]]), t([[0.0], [0.0]]), torch.tensor([[1.0], [-1.0]]), cfg=cfg)
    as_int, _ = preference_loss(t([[1.0], [0.0]]), t([[0.0], [0.0]]), torch.tensor([[1], [-1]]), cfg=cfg)
    assert as_float.item() == as_int.item()


@pytest.mark.parametrize("shape", [(2,), (1, 1), (2, 2), (1, 2)])
def test_mask_of_the_wrong_shape_is_refused(shape):
    r = torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"mask must have the rewards' shape \(2, 1\)"):
        preference_loss(r, r, torch.ones(2, 1, dtype=torch.long), torch.ones(shape))
