"""load_vlm options (freezing, LoRA, checkpointing, dtype, paths) and forwards for every family."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.video_utils import VideoMetadata

from mmreward.backbones.chat_template import TOOL_CHAT_TEMPLATE
from mmreward.backbones.tiny import FAMILIES, build_tiny_vlm
from mmreward.backbones.vlm import LoRASettings, VLMLoadConfig, language_model, load_vlm, vision_tower


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {family: build_tiny_vlm(root / family, family=family, seed=0) for family in FAMILIES}


def _image_batch(processor):
    content = [{"type": "image"}, {"type": "text", "text": "Is it good?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=[Image.new("RGB", (84, 84), "green")], return_tensors="pt")


def _video_batch(processor):
    frames = np.random.default_rng(0).integers(0, 255, (8, 84, 84, 3), dtype=np.uint8)
    # 8 frames taken every 10th frame of an 80-frame, 10 fps clip: timestamps 0..7 s.
    metadata = VideoMetadata(total_num_frames=80, fps=10.0, frames_indices=list(range(0, 80, 10)))
    content = [{"type": "video"}, {"type": "text", "text": "Is the motion smooth?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], videos=[frames], video_metadata=[metadata], return_tensors="pt")


def _backward(model, processor):
    model.train()
    model(**_image_batch(processor)).logits.float().pow(2).mean().backward()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_with_image_and_video(tiny_dirs, family):
    model, processor = load_vlm(tiny_dirs[family])
    vocab = len(processor.tokenizer)
    for batch, pad_id, expected_pads in (
        (_image_batch(processor), processor.image_token_id, 9),  # 84 px -> 3x3 merged tokens
        (_video_batch(processor), processor.video_token_id, 4 * 9),  # 8 frames -> 4 temporal pairs
    ):
        assert int((batch["input_ids"] == pad_id).sum()) == expected_pads
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (1, batch["input_ids"].shape[1], vocab)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_accessors_find_towers(tiny_dirs, family):
    model, _ = load_vlm(tiny_dirs[family])
    assert vision_tower(model) is model.model.visual
    assert language_model(model) is model.model.language_model


def test_freeze_vision_blocks_only_vision_gradients(tiny_dirs):
    model, processor = load_vlm(VLMLoadConfig(path=str(tiny_dirs["qwen2_5_vl"]), freeze_vision=True))
    vision_ids = {id(p) for p in vision_tower(model).parameters()}
    for name, param in model.named_parameters():
        assert param.requires_grad == (id(param) not in vision_ids), name
    _backward(model, processor)
    assert all(p.grad is None for p in vision_tower(model).parameters())
    assert all(p.grad is not None for p in language_model(model).layers.parameters())


def test_without_freezing_vision_gets_gradients(tiny_dirs):
    model, processor = load_vlm(tiny_dirs["qwen2_5_vl"])
    _backward(model, processor)
    assert all(p.grad is not None for p in vision_tower(model).blocks.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_language_model_adapters(tiny_dirs, family):
    plain, processor = load_vlm(tiny_dirs[family])
    lora = LoRASettings(r=4, alpha=8, dropout=0.0)
    model, _ = load_vlm(VLMLoadConfig(path=str(tiny_dirs[family]), lora=lora))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    layers = plain.config.text_config.num_hidden_layers
    assert len(trainable) == layers * len(lora.target_modules) * 2  # lora_A + lora_B per target
    assert all(".language_model.layers." in n and (".lora_A." in n or ".lora_B." in n) for n in trainable)
    batch = _image_batch(processor)
    with torch.no_grad():  # lora_B starts at zero: the wrapped model computes the same function
        assert torch.equal(model(**batch).logits, plain(**batch).logits)
    _backward(model, processor)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert vision_tower(model) is model.get_base_model().model.visual


def test_gradient_checkpointing_enabled_and_backward_runs(tiny_dirs):
    model, processor = load_vlm(VLMLoadConfig(path=str(tiny_dirs["qwen2_5_vl"]), gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    assert language_model(model).gradient_checkpointing
    assert model.config.get_text_config().use_cache is False
    _backward(model, processor)
    assert language_model(model).layers[0].self_attn.q_proj.weight.grad is not None


def test_dtype_and_attention_options(tiny_dirs):
    model, _ = load_vlm(
        VLMLoadConfig(path=str(tiny_dirs["qwen2_5_vl"]), dtype="bfloat16", attn_implementation="eager")
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"dtype": "fp8"}, ValueError, "dtype 'fp8'"),
        ({"attn_implementation": "flash"}, ValueError, "attn_implementation 'flash'"),
        ({"path": "./missing/model_dir"}, FileNotFoundError, "missing/model_dir"),
    ],
)
def test_bad_options_raise_clear_errors(tiny_dirs, overrides, error, match):
    cfg = VLMLoadConfig(**{"path": str(tiny_dirs["qwen2_5_vl"]), **overrides})
    with pytest.raises(error, match=match):
        load_vlm(cfg)


def test_tool_chat_template_option_upgrades_stock_template(tiny_dirs, tmp_path):
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    stock_dir = shutil.copytree(tiny_dirs["qwen2_5_vl"], tmp_path / "stock")
    (stock_dir / "chat_template.jinja").write_text(qwen2_5_vl_chat_template)  # tool-blind, as shipped
    _, stock = load_vlm(VLMLoadConfig(path=str(stock_dir), tool_chat_template=False))
    _, upgraded = load_vlm(VLMLoadConfig(path=str(stock_dir), tool_chat_template=True))
    assert stock.chat_template == qwen2_5_vl_chat_template
    assert upgraded.chat_template == TOOL_CHAT_TEMPLATE
