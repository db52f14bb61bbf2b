"""CUDA paths: fp32 equality of the packed pair form, bf16 training, flash attention, yes-token scoring.

Run on a GPU machine with `pytest -m gpu tests/gpu` (bench/gpu_check.sh does); skipped without CUDA.
The model is a "larger tiny" Qwen2.5-VL (hidden 256, 4 layers, vision depth 4) so kernels see
realistic head sizes (head_dim 32) and several attention blocks.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, PairCollator
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.records import PreferenceRecord, Side
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig
from mmreward.training.trainer import use_fused_adamw
from mmreward.heads.yes_token.scoring import YesTokenScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SIZES = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=512,
             vision_hidden_size=64, vision_depth=4, vision_heads=4, image_tokens=(4, 64))
LOSS = PreferenceLossConfig()
DEVICE = "cuda"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_gpu"), family="qwen2_5_vl", **SIZES)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 would make fp32 matmuls differ by ~1e-3; equality checks need true fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pairs(count: int = 4) -> list[PreferenceExample]:
    """Response pairs sharing prompt and one or two images (the packed form's use case)."""
    images = [Image.new("RGB", (112, 84), (200, 30, 30)), Image.new("RGB", (84, 112), (20, 30, 230))]
    examples = []
    for i in range(count):
        imgs = images[: 1 + i % 2]
        paths = [Path(f"{j}.png") for j in range(len(imgs))]
        ra, rb = f"a red square number {i}", "a blue circle" + " and more" * i
        record = PreferenceRecord(f"p{i}", f"describe picture {i}", Side(images=paths, response=ra),
                                  Side(images=paths, response=rb), {"overall": "ab"[i % 2]})
        examples.append(PreferenceExample(record, SideMedia(imgs, response=ra), SideMedia(imgs, response=rb)))
    return examples


def _on(batch: dict, device: str, dtype: torch.dtype) -> dict:
    inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
              for k, v in batch["inputs"].items()}
    return {**batch, "inputs": inputs, "labels": batch["labels"].to(device), "label_mask": batch["label_mask"].to(device)}


def _batches(model: RewardModel, device: str, dtype: torch.dtype) -> dict[str, dict]:
    examples = _pairs()
    return {form: _on(PairCollator(model.processor, ["overall"], CollateConfig(pair_form=form))(examples), device, dtype)
            for form in ("naive", "shared_prefix")}


def _loss_and_grads(model: RewardModel, batch: dict) -> tuple[torch.Tensor, float, dict[str, torch.Tensor]]:
    model.zero_grad()
    rewards = model(batch["inputs"])
    loss, _ = model.pair_loss(rewards, batch["labels"], batch["label_mask"], LOSS)
    loss.backward()
    return rewards.detach(), loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_equals_naive_fp32_on_cuda(backbone):
    """The block-mask form gives the naive form's rewards, loss and gradients with CUDA kernels."""
    torch.manual_seed(0)
    model = RewardModel.from_backbone(backbone, dtype="float32",
                                      tuning=TuningConfig(mode="full", freeze_vision=False)).to(DEVICE)
    batches = _batches(model, DEVICE, torch.float32)
    r_naive, l_naive, g_naive = _loss_and_grads(model, batches["naive"])
    r_packed, l_packed, g_packed = _loss_and_grads(model, batches["shared_prefix"])
    assert abs(l_naive - l_packed) < 1e-5
    torch.testing.assert_close(r_packed, r_naive, atol=1e-5, rtol=0)
    assert g_naive.keys() == g_packed.keys()
    for name, grad in g_naive.items():
        # Relative error per tensor; the 1e-6 floor covers gradients that cancel to ~0 (the head's
        # output bias under the Bradley-Terry loss), where only rounding noise is left.
        assert (g_packed[name] - grad).norm() <= 1e-4 * grad.norm() + 1e-6, name


def test_bf16_training_on_cuda_learns_a_fixed_batch(backbone):
    """bf16 weights and SDPA: both forms agree to bf16 precision, and fused AdamW fits a fixed batch."""
    torch.manual_seed(0)
    model = RewardModel.from_backbone(backbone, dtype="bfloat16",
                                      tuning=TuningConfig(mode="full", freeze_vision=True)).to(DEVICE)
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    batches = _batches(model, DEVICE, torch.bfloat16)
    with torch.no_grad():
        naive = model(batches["naive"]["inputs"]).float()
        packed = model(batches["shared_prefix"]["inputs"]).float()
    assert torch.isfinite(naive).all()
    torch.testing.assert_close(packed, naive, atol=0.05 * naive.abs().max().item() + 1e-2, rtol=0)
    # The optimizer the stage trainers build on one GPU: fused AdamW, here on bf16 weights.
    fused = use_fused_adamw(Accelerator())
    assert fused
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    batch = batches["shared_prefix"]
    losses = []
    for _ in range(15):
        loss, _ = model.pair_loss(model(batch["inputs"]), batch["labels"], batch["label_mask"], LOSS)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flash_attention_scores_match_sdpa(backbone):
    """flash_attention_2 (naive pair form: the block mask needs SDPA/eager) scores like SDPA in bf16."""
    scores = {}
    for attn in ("sdpa", "flash_attention_2"):
        torch.manual_seed(0)
        model = RewardModel.from_backbone(backbone, dtype="bfloat16", attn_implementation=attn).to(DEVICE)
        batch = _batches(model, DEVICE, torch.bfloat16)["naive"]
        scores[attn] = model.score(batch["inputs"]).float()
    torch.testing.assert_close(scores["flash_attention_2"], scores["sdpa"], atol=3e-2, rtol=3e-2)


def test_yes_token_scores_on_cuda_match_cpu(backbone):
    """Batched P(yes) on the GPU equals the CPU's (fp32), with left padding over mixed image sizes."""
    torch.manual_seed(0)
    cpu_model = RewardModel.from_backbone(backbone, head="yes_token", dtype="float32").eval()
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    candidates = [SideMedia([Image.new("RGB", size, colour)]) for size, colour in
                  [((84, 84), (255, 0, 0)), ((112, 84), (0, 255, 0)), ((84, 140), (0, 0, 255))]]
    probs = {name: YesTokenScorer(m, batch_size=3).score("a red square", candidates)
             for name, m in (("cpu", cpu_model), (DEVICE, gpu_model))}
    assert ((probs["cpu"] > 0) & (probs["cpu"] < 1)).all()
    torch.testing.assert_close(probs[DEVICE], probs["cpu"], atol=1e-4, rtol=0)
