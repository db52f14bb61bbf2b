"""Shared-prefix pair forward: packing layout, block mask, and equality with the naive form."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, PairCollator
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.records import PreferenceRecord, Side
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig
from mmreward.forward.packed import PackError, block_attention_mask, pack_pairs

PAD = 0


def _enc(rows, mm_rows, pad_left=False):
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD)
    mm = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, mm_rows)):
        sl = slice(length - len(r), length) if pad_left else slice(0, len(r))
        ids[i, sl], mm[i, sl], mask[i, sl] = torch.tensor(r), torch.tensor(t), 1
    return {"input_ids": ids, "mm_token_type_ids": mm, "attention_mask": mask, "pixel_values": torch.ones(2, 3)}


def test_pack_pairs_layout():
    enc_a = _enc([[5, 6, 9, 9, 7, 8], [5, 1, 2]], [[0, 0, 1, 1, 0, 0], [0, 0, 0]], pad_left=True)
    enc_b = _enc([[5, 6, 9, 9, 3], [5, 1, 2]], [[0, 0, 1, 1, 0], [0, 0, 0]])
    packed = pack_pairs(enc_a, enc_b, pad_token_id=PAD)
    assert packed["input_ids"].tolist() == [[5, 6, 9, 9, 7, 8, 3], [5, 1, 2, 2, 0, 0, 0]]
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 2], [0, 0, 1, 2, -1, -1, -1]]
    assert packed["mm_token_type_ids"].tolist() == [[0, 0, 1, 1, 0, 0, 0], [0] * 7]
    assert packed["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    # identical sides keep one token each so each reward is read on its own side
    assert packed["read_index"].tolist() == [[5, 6], [2, 3]]
    assert torch.equal(packed["pixel_values"], enc_a["pixel_values"])


def test_pack_pairs_refuses_different_media():
    enc_a = _enc([[5, 9, 9, 7]], [[0, 1, 1, 0]])
    enc_b = _enc([[5, 8, 9, 9, 7]], [[0, 0, 1, 1, 0]])
    with pytest.raises(PackError, match="r9: media tokens after the shared prefix"):
        pack_pairs(enc_a, enc_b, pad_token_id=PAD, ids=["r9"])


def test_block_mask_exact(tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(build_tiny_vlm(tmp_path / "tiny")).get_text_config()
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # tail b sees the prefix and itself, not tail a
        [1, 1, 0, 0, 0, 0],  # padding query sees the prefix only: no empty row
    ], dtype=torch.bool)
    config._attn_implementation = "sdpa"
    mask = block_attention_mask(config, torch.float32, (segments >= 0).long(), segments)
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], allowed)
    config._attn_implementation = "eager"
    additive = block_attention_mask(config, torch.bfloat16, (segments >= 0).long(), segments)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive[0, 0] == 0, allowed) and additive.min() == torch.finfo(torch.bfloat16).min
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="pair_form='naive'"):
        block_attention_mask(config, torch.float32, (segments >= 0).long(), segments)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


def _response_pairs():
    images = [Image.new("RGB", (84, 84), (200, 30, 30)), Image.new("RGB", (112, 84), (20, 30, 230))]
    responses = [("a red square", "a blue circle, large"), ("yes", "no"), ("same", "same"), ("x" * 30, "y")]
    examples = []
    for i, (ra, rb) in enumerate(responses):
        imgs = images[: 1 + i % 2]
        paths = [Path(f"/media/{j}.png") for j in range(len(imgs))]
        record = PreferenceRecord(f"p{i}", f"describe picture {i}", Side(images=paths, response=ra),
                                  Side(images=paths, response=rb), {"overall": "ab"[i % 2]})
        examples.append(PreferenceExample(record, SideMedia(imgs, response=ra), SideMedia(imgs, response=rb)))
    return examples


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_packed_equals_naive_loss_and_gradients(tiny, padding_side):
    torch.manual_seed(0)
    model = RewardModel.from_backbone(tiny, dimensions=["overall"], tuning=TuningConfig(mode="full", freeze_vision=False))
    examples = _response_pairs()
    results = []
    for form in ("naive", "shared_prefix"):
        batch = PairCollator(model.processor, ["overall"], CollateConfig(pair_form=form, padding_side=padding_side))(examples)
        assert ("segment_ids" in batch["inputs"]) == (form == "shared_prefix")
        model.zero_grad()
        rewards = model(batch["inputs"])
        loss, _ = model.pair_loss(rewards, batch["labels"], batch["label_mask"], PreferenceLossConfig(center_coef=0.1))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((rewards.detach(), loss.item(), grads, batch["inputs"]["pixel_values"].shape[0]))
    (r_naive, l_naive, g_naive, px_naive), (r_packed, l_packed, g_packed, px_packed) = results
    assert px_packed * 2 == px_naive  # media encoded once per pair
    assert abs(l_naive - l_packed) < 1e-6
    torch.testing.assert_close(r_packed, r_naive, atol=1e-6, rtol=0)
    assert g_naive.keys() == g_packed.keys() and any(".visual." in n for n in g_naive)
    for name, grad in g_naive.items():
        # Relative error per tensor, ||packed - naive|| / ||naive||: reduction orders differ (an image's
        # gradient is summed once instead of twice), so single entries of tiny gradients differ by more.
        assert (g_packed[name] - grad).norm() <= 1e-4 * grad.norm() + 1e-12, name
