"""Suite-wide settings: offline, deterministic, headless."""

import os
import sys
from pathlib import Path

import pytest
import torch

# Shared helpers of the suite (script_loading) import by name under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Set before any test module imports transformers / qwen_vl_utils / mujoco.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for a module's tests: tiny models run fastest so, CI's CPUs are shared, and a
    test comparing in-process results with a one-thread subprocess needs the same float summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def sb3_logs_in_a_temporary_dir(tmp_path_factory):
    """SB3's default logger makes a folder under the system temp dir on every `learn()` without a
    tensorboard_log; the suite's go to its own temporary directory instead."""
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    os.environ.pop("SB3_LOGDIR", None)


@pytest.fixture(scope="session")
def scalar_checkpoint(tmp_path_factory):
    """A saved tiny scalar reward model (VQ, TA; overall = their sum) with normalisation statistics, normalising
    by default: what one-call scoring (tests/test_score.py) and the reward server (tests/serve) score with."""
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.model import RewardModel, ScoringSettings

    tiny = build_tiny_vlm(tmp_path_factory.mktemp("vlm"))
    model = RewardModel.from_backbone(tiny, dimensions=["VQ", "TA"], head_options={"init_std": 0.5},
                                      settings=ScoringSettings(overall="sum", normalize=True))
    model.set_reward_stats({"VQ": {"mean": 0.5, "std": 2.0}, "TA": {"mean": -1.0, "std": 0.25}})
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")
