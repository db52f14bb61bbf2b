"""Shared fixtures for VLM-RM tests: one tiny random-weight CLIP per session; stage scripts as modules."""

import sys
from contextlib import contextmanager

import pytest
import torch

from mmreward.backbones.clip import build_tiny_clip, load_clip
from script_loading import load_script
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


@contextmanager
def script_module(relative: str):
    """A train/ or eval/ script imported as a module (`load_script`); torch's thread count and sys.modules are
    restored afterwards (stage configs may set one thread)."""
    threads = torch.get_num_threads()
    module = None
    try:
        module = load_script(relative)
        yield module
    finally:
        torch.set_num_threads(threads)
        if module is not None:
            sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="session")
def stage_script():
    """`script_module` for module-scoped fixtures (a conftest is not importable under importlib mode)."""
    return script_module
