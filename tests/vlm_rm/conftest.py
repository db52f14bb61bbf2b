"""Shared fixtures for VLM-RM tests: one tiny random-weight CLIP per session; stage scripts as modules."""

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mmreward.backbones.clip import build_tiny_clip, load_clip
from vlm_rm.reward import CLIPReward

ROOT = Path(__file__).resolve().parents[2]
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
    """A train/ or eval/ script imported as a module (scripts are not a package); torch's thread count and
    sys.modules are restored afterwards (stage configs may set one thread)."""
    name = relative.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def stage_script():
    """`script_module` for module-scoped fixtures (a conftest is not importable under importlib mode)."""
    return script_module
