"""Projection reward (exact values) and CLIPReward (prompt means, preprocessing, batching)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmreward.backbones.clip import TINY_PREPROCESS_CFG
from vlm_rm.reward import CLIPReward, projection_reward

GOAL = ["a humanoid robot kneeling"]
BASELINE = ["a humanoid robot"]

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
G = torch.tensor([1.0, 0.0])
B = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize(
    "alpha, expected",
    [(0.0, [1.0, 0.0, 0.6]), (1.0, [1.0, 0.0, 0.64]), (0.5, [1.0, 0.0, 0.63])],
)
def test_projection_reward_exact_values(alpha, expected):
    # d = g - b = (1, -1); for x = (0.6, 0.8): x - g = (-0.4, 0.8), its d-component is (-0.6, 0.6).
    assert projection_reward(X, G, B, alpha).tolist() == pytest.approx(expected, abs=1e-6)


def test_projection_reward_matches_explicit_projection_matrix():
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    g, b = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    alpha = 0.3
    d = (g - b)[:, None]
    P = alpha * d @ d.T / (d.T @ d) + (1 - alpha) * torch.eye(8)
    expected = 1 - 0.5 * ((x - g) @ P).pow(2).sum(-1)
    assert torch.allclose(projection_reward(x, g, b, alpha), expected, atol=1e-6)
    # alpha = 0 with a unit goal is cosine similarity
    g_unit = F.normalize(g, dim=0)
    assert torch.allclose(projection_reward(x, g_unit, b, 0.0), x @ g_unit, atol=1e-6)


def test_projection_reward_rejects_bad_input():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        projection_reward(X, G, B, 1.5)
    with pytest.raises(ValueError, match="coincide"):
        projection_reward(X, G, G, 0.5)
    with pytest.raises(ValueError, match=r"expected x \[N, D\]"):
        projection_reward(X, torch.zeros(3), B, 0.0)


def test_prompt_means_are_not_renormalised_by_default(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    goals = ["a humanoid robot kneeling", "a robot on its knees"]
    plain = CLIPReward(model, preprocess, tokenizer, goals, BASELINE)
    renorm = CLIPReward(model, preprocess, tokenizer, goals, BASELINE, renormalize_means=True)
    unit = plain.embed_prompts(goals)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(plain.goal, unit.mean(0))
    assert plain.goal.norm() < 0.999  # mean of two distinct unit vectors
    assert torch.allclose(renorm.goal, unit.mean(0) / unit.mean(0).norm())
    assert renorm.goal.norm().item() == pytest.approx(1.0, abs=1e-6)


def _frames(n, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_fast_tensor_path_matches_the_models_pil_transform(clip_reward):
    frames = _frames(3)
    fast = clip_reward.pixels(frames)
    pil = torch.stack([clip_reward.preprocess(Image.fromarray(f)) for f in frames])
    assert torch.allclose(fast, pil, atol=1e-5)
    assert clip_reward.pixel_mean.flatten().tolist() == pytest.approx(TINY_PREPROCESS_CFG["mean"])
    assert torch.allclose(clip_reward(frames), clip_reward([Image.fromarray(f) for f in frames]), atol=1e-5)


def test_batches_give_the_same_rewards_and_other_sizes_use_the_transform(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    frames = _frames(5)
    big = CLIPReward(model, preprocess, tokenizer, GOAL, BASELINE, alpha=0.5, batch_size=64)(frames)
    small = CLIPReward(model, preprocess, tokenizer, GOAL, BASELINE, alpha=0.5, batch_size=2)(frames)
    assert big.shape == (5,) and torch.allclose(big, small, atol=1e-5)
    odd = _frames(2, size=120)
    assert CLIPReward(model, preprocess, tokenizer, GOAL, BASELINE)(odd).shape == (2,)


def test_reward_is_the_projection_of_the_frame_embeddings(clip_reward):
    frames = _frames(4, seed=1)
    emb = clip_reward.embed_frames(frames)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    expected = projection_reward(emb, clip_reward.goal, clip_reward.baseline, 0.5)
    assert torch.allclose(clip_reward(frames), expected)


def test_load_by_local_dir_and_bad_prompts(tiny_clip_dir):
    reward = CLIPReward.load(tiny_clip_dir, GOAL, BASELINE, alpha=1.0)
    assert reward(_frames(2)).shape == (2,)
    with pytest.raises(ValueError, match="at least one goal prompt"):
        CLIPReward.load(tiny_clip_dir, [], BASELINE)


def test_unnormalised_image_embeddings_are_refused(clip_reward):
    # The old code scored them: x = 3 * unit row gave a reward off by several units from the unit row's.
    unit = F.normalize(torch.randn(4, clip_reward.goal.shape[0], generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.allclose(clip_reward.reward_from_embeddings(unit),
                          projection_reward(unit, clip_reward.goal, clip_reward.baseline, 0.5))
    scaled = unit.clone()
    scaled[2] *= 3.0
    with pytest.raises(ValueError, match=r"unit vectors .* 1 of 4 rows are not, e.g. row 2 has norm 3"):
        clip_reward.reward_from_embeddings(scaled)
    with pytest.raises(ValueError, match="unit vectors"):
        projection_reward(X * 0.5, G, B, 0.0)
    projection_reward(X * (1 + 5e-4), G, B, 0.0)  # float rounding of a normalised embedding is not refused


def test_frames_at_model_size_take_the_tensor_path_without_the_transform(clip_reward, monkeypatch):
    frames = _frames(3, seed=2)
    expected = clip_reward.pixels(frames)
    calls = []

    def spy(image):
        calls.append(image.size)
        raise AssertionError("the PIL transform ran for frames already at the model's size")

    monkeypatch.setattr(clip_reward, "preprocess", spy)
    assert torch.equal(clip_reward.pixels(frames), expected)  # spy not called: no exception
    manual = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - clip_reward.pixel_mean) / clip_reward.pixel_std
    assert torch.allclose(expected, manual, atol=1e-6)
    with pytest.raises(AssertionError, match="PIL transform ran"):
        clip_reward.pixels(_frames(1, size=100))  # other sizes do go through the transform
    assert calls == [(100, 100)]


@pytest.mark.parametrize("size", [224, 120])
def test_non_uint8_frames_are_refused(clip_reward, size):
    floats = _frames(2, size=size).astype(np.float32) / 255.0  # [0, 1] floats: nearly black if read as 0..255
    with pytest.raises(ValueError, match=r"uint8 RGB \[N, H, W, 3\], got float32"):
        clip_reward(floats)
    with pytest.raises(ValueError, match=r"uint8 RGB \[H, W, 3\], got float32"):
        clip_reward(list(floats))
    with pytest.raises(ValueError, match=r"uint8 RGB \[N, H, W, 3\], got uint8 \(2, 224, 224, 4\)"):
        clip_reward(np.zeros((2, 224, 224, 4), dtype=np.uint8))


def test_an_empty_frame_list_is_refused(clip_reward):
    for empty in ([], np.zeros((0, 224, 224, 3), dtype=np.uint8)):
        with pytest.raises(ValueError, match="no frames to embed"):
            clip_reward(empty)
