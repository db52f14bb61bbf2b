"""Shared fixtures for VLM-RM tests: one tiny random-weight CLIP per session."""

import pytest

from mmreward.backbones.clip import build_tiny_clip, load_clip
from vlm_rm.reward import CLIPReward

GOAL = ["a humanoid robot kneeling"]
BASELINE = ["a humanoid robot"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    return load_clip(tiny_clip_dir)


@pytest.fixture(scope="session")
def clip_reward(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    return CLIPReward(model, preprocess, tokenizer, GOAL, BASELINE, alpha=0.5)
