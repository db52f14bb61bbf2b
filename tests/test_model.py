"""RewardModel contracts on a tiny Qwen2.5-VL: shapes, padding, M-RoPE, tuning modes, checkpoints."""

import json

import pytest
import torch
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, encode_sides
from mmreward.data.dataset import SideMedia
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, RewardModelError, TuningConfig

DIMS = ["VQ", "TA", "overall"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


def _model(tiny, mode="full", freeze_vision=True, seed=0):
    torch.manual_seed(seed)
    return RewardModel.from_backbone(tiny, dimensions=DIMS, tuning=TuningConfig(mode=mode, freeze_vision=freeze_vision))


def _sides():
    return (
        ["two red circles", "one blue square and more words", "a response prompt"],
        [
            SideMedia(images=[Image.new("RGB", (84, 84), (200, 10, 10))]),
            SideMedia(images=[Image.new("RGB", (112, 84), (10, 10, 200))]),
            SideMedia(images=[Image.new("RGB", (84, 112), (10, 200, 10))], response="It is green."),
        ],
    )


def _batch(model, padding_side="right"):
    prompts, sides = _sides()
    return encode_sides(model.processor, prompts, sides, CollateConfig(padding_side=padding_side))


def test_score_shape_and_padding_invariance(tiny):
    model = _model(tiny).eval()
    right = model.score(_batch(model, "right"))
    left = model.score(_batch(model, "left"))
    assert right.shape == (3, 3) and not right.requires_grad
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    prompts, sides = _sides()
    for i in range(3):
        single = model.score(encode_sides(model.processor, prompts[i : i + 1], sides[i : i + 1], CollateConfig()))
        torch.testing.assert_close(single[0], right[i], atol=1e-5, rtol=1e-5)
    assert right.std(0).min() > 0  # different inputs give different rewards


def test_stale_rope_deltas_do_not_leak(tiny):
    """A cached rope delta from an earlier call must not change the next scores."""
    model = _model(tiny).eval()
    batch = _batch(model)
    before = model.score(batch)
    model.backbone.model.rope_deltas = torch.full((3, 1), 57)
    torch.testing.assert_close(model.score(batch), before)
    # And the positions really matter: a constant shift of the vision rows changes the rewards.
    positions = model._position_ids(batch, batch["attention_mask"])
    assert positions.shape == (3, *batch["input_ids"].shape)
    assert not torch.equal(positions[1], positions[0])  # M-RoPE: height/width rows differ on image tokens


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_tuning_modes_and_gradients(tiny):
    full = _model(tiny, "full", freeze_vision=True)
    names = _trainable(full)
    assert any(n.startswith("head.") for n in names)
    assert any("language_model.layers" in n for n in names)
    assert not any(".visual." in n for n in names)
    assert not any("lm_head" in n for n in names)
    assert any(".visual." in n for n in _trainable(_model(tiny, "full", freeze_vision=False)))

    head_only = _model(tiny, "head")
    assert _trainable(head_only) == {"head.proj.weight", "head.proj.bias", "head.out.weight", "head.out.bias"}

    lora = _model(tiny, "lora")
    names = _trainable(lora)
    assert {n for n in names if not n.startswith("head.")} and all(
        n.startswith("head.") or ("lora_" in n and "language_model" in n) for n in names
    )

    # Gradients reach what trains and nothing else.
    batch = _batch(full)
    for model in (full, head_only, lora):
        _perturb(model)  # LoRA's B starts at zero, which would zero A's first gradient
        model.zero_grad()
        rewards = model(batch)
        loss, _ = model.pair_loss(rewards[[0, 1, 1, 2]], torch.tensor([[1, -1, 1], [-1, 1, 0]]),
                                  torch.ones(2, 3, dtype=torch.bool), PreferenceLossConfig(center_coef=0.1))
        loss.backward()
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:
                assert param.grad is None, name


@pytest.mark.parametrize("mode", ["full", "lora", "head"])
def test_save_load_round_trip(tiny, tmp_path, mode):
    model = _model(tiny, mode, seed=1)
    _perturb(model)  # move away from the base so the round trip is meaningful
    model.eval()
    batch = _batch(model)
    expected = model.score(batch)
    out = model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((out / "reward_config.json").read_text())
    assert config["head"]["name"] == "scalar" and config["head"]["dimensions"] == DIMS
    assert config["backbone"]["family"] == "qwen2_5_vl" and config["tuning"]["mode"] == mode
    assert config["backbone"]["path"] == str(tiny.resolve())
    assert (out / "head.safetensors").is_file()
    assert (out / "backbone" / "model.safetensors").is_file() == (mode == "full")
    assert (out / "adapter" / "adapter_model.safetensors").is_file() == (mode == "lora")
    loaded = RewardModel.from_pretrained(out)
    assert loaded.dimensions == DIMS and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.score(batch), expected, atol=1e-6, rtol=1e-6)
    trainable = RewardModel.from_pretrained(out, trainable=True)
    assert _trainable(trainable) == _trainable(model)


def test_load_errors(tiny, tmp_path):
    with pytest.raises(RewardModelError, match="reward_config.json: missing"):
        RewardModel.from_pretrained(tmp_path)
    out = _model(tiny, "head").save_pretrained(tmp_path / "ckpt")
    config = json.loads((out / "reward_config.json").read_text())
    config["head"]["options"]["inner_dim"] = 3
    (out / "reward_config.json").write_text(json.dumps(config))
    with pytest.raises(RewardModelError, match="does not match the head config"):
        RewardModel.from_pretrained(out)
    (out / "reward_config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(RewardModelError, match="format is 'other'"):
        RewardModel.from_pretrained(out)


def test_head_must_match_backbone(tiny):
    from mmreward.heads import build_head

    model = _model(tiny, "head")
    with pytest.raises(RewardModelError, match="hidden size 7"):
        RewardModel(model.backbone, build_head("scalar", 7, ["overall"]))


def test_ensemble_mean_and_spread(tiny):
    from mmreward.model import RewardEnsemble

    members = [_model(tiny, "head", seed=s).eval() for s in (0, 1, 2)]
    ensemble = RewardEnsemble(members)
    batch = _batch(members[0])
    mean, spread = ensemble.score(batch)
    each = torch.stack([m.score(batch) for m in members])
    torch.testing.assert_close(mean, each.mean(0))
    torch.testing.assert_close(spread, ((each - each.mean(0)) ** 2).mean(0).sqrt())
    assert spread.min() > 0  # differently initialised heads disagree
    assert torch.equal(RewardEnsemble(members[:1]).score(batch)[1], torch.zeros_like(mean))
    other = RewardModel.from_backbone(tiny, dimensions=["overall"], tuning=TuningConfig(mode="head"))
    with pytest.raises(RewardModelError, match="member 1 has dimensions"):
        RewardEnsemble([members[0], other])
