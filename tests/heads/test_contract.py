"""The contract every registered head keeps, checked on a tiny backbone for each head in the registry.

A head added to `mmreward.heads` must have an entry in CASES (the test below fails otherwise), so no
head escapes these checks: config round trip, shapes and read positions, gradients only where the
tuning says, save/load with equal rewards, the batched evaluation forward, pair collation and loss.
"""

import pytest
import torch

from mmreward.collate import CollateConfig
from mmreward.data.dataset import PreferenceDataset
from mmreward.data.media import MediaConfig
from mmreward.heads import HEADS, head_from_config
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig

# name -> (dimensions, options): each registered head as the contract builds it.
CASES = {
    "scalar": (["VQ", "TA"], {"inner_dim": 16}),
    "yes_token": (["TA"], {}),
    "reward_token": (["VQ", "TA"], {}),
}


def test_every_registered_head_is_covered():
    assert sorted(CASES) == sorted(HEADS)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from mmreward.backbones.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Two image pairs and two video pairs, no responses (every head can score media against a prompt)."""
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("syn")
    generate_synthetic(out, seed=0, config=SyntheticConfig(image_splits=SplitSizes(2, 1, 1),
                                                           video_splits=SplitSizes(2, 1, 1)))
    media = MediaConfig(num_frames=4)
    return {kind: [PreferenceDataset(out / kind / "train.jsonl", media)[i] for i in range(2)]
            for kind in ("images", "videos")}


def _model(backbone, name, mode="full", **kwargs):
    dims, options = CASES[name]
    tuning = TuningConfig(mode=mode, lora_r=4, **kwargs)
    return RewardModel.from_backbone(backbone, head=name, dimensions=dims, head_options=options, tuning=tuning)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip(name):
    dims, options = CASES[name]
    head = HEADS[name](32, dims, **options)
    again = head_from_config(head.config())
    assert type(again) is HEADS[name] and again.config() == head.config()
    assert [p.shape for p in again.parameters()] == [p.shape for p in head.parameters()]


@pytest.mark.parametrize("kind", ["images", "videos"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shapes_read_positions_and_batched_forward(backbone, examples, name, kind):
    from mmreward.forward.batched import batched_rewards

    model = _model(backbone, name).eval()
    batch = model.head.pair_collator(model.processor, CollateConfig())(examples[kind])
    inputs, k = batch["inputs"], len(model.dimensions)
    read = model.head.read_positions(inputs["input_ids"], inputs["attention_mask"])
    assert read.shape == (4, model.head.num_reads)
    assert bool(inputs["attention_mask"].gather(1, read).all())  # read positions are real tokens
    with torch.no_grad():
        rewards = model(inputs)
        assert rewards.shape == (4, k) and torch.isfinite(rewards).all()
        torch.testing.assert_close(batched_rewards(model, inputs), model.score(inputs), atol=1e-5, rtol=0)
    loss, stats = model.pair_loss(rewards, batch["labels"], batch["label_mask"], PreferenceLossConfig(kind="btt"))
    assert loss.ndim == 0 and torch.isfinite(loss) and stats["count"].shape == (k,)


@pytest.mark.parametrize("mode", ["head", "lora", "full"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_only_what_trains(backbone, examples, name, mode):
    model = _model(backbone, name, mode=mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if not any(p.requires_grad for p in model.parameters()):  # a head without weights on a frozen backbone
        assert not list(model.head.parameters()) and mode == "head"
        return
    batch = model.head.pair_collator(model.processor, CollateConfig())(examples["images"])
    model(batch["inputs"]).sum().backward()
    token_rows = model.head.trainable_token_ids()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if p is model.token_row_embedding():  # only the head's own token rows may move
            moving = p.grad.abs().sum(dim=1).nonzero().flatten().tolist()
            assert moving and set(moving) <= set(token_rows), n
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trained) or not list(model.head.parameters())
    if mode == "head":
        assert {n for n in trained if n.startswith("backbone.")} == (
            {n for n, p in model.named_parameters() if p is model.token_row_embedding()})
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # backward alone changes nothing


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_save_and_load_give_equal_rewards(backbone, examples, tmp_path, name, mode):
    model = _model(backbone, name, mode=mode, freeze_vision=mode == "full")
    rows = model.head.trainable_token_ids() or slice(None)
    with torch.no_grad():  # trained-looking weights everywhere that trains, so the round trip has something to keep
        for p in model.parameters():
            if p is model.token_row_embedding():
                p[rows] += torch.randn_like(p[rows]) * 0.05  # only these rows train (and are saved)
            elif p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    sides = [examples["videos"][0].a, examples["images"][0].b]  # a video and an image
    inputs = model.encode(["a red circle", "two blue squares"], sides)
    with torch.no_grad():
        want = model.score(inputs)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RewardModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.head.config() == model.head.config() and loaded.settings == model.settings
    with torch.no_grad():
        got = loaded.score(loaded.encode(["a red circle", "two blue squares"], sides))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
