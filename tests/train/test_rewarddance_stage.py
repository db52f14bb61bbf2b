"""The reward stage with the yes_token head (RewardDance config): outputs, LoRA checkpoint, learning check."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from mmreward.collate import CollateConfig
from mmreward.data.dataset import PreferenceDataset
from mmreward.data.records import label_to_int
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.manifest import read_manifest
from mmreward.metrics import pair_accuracy
from mmreward.model import RewardModel
from mmreward.yes_token import YesTokenHead

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
import reward as stage  # noqa: E402  (train/reward.py, the script under test)

IMAGE_CONFIG = ROOT / "train" / "configs" / "rewarddance_image.yaml"
VIDEO_CONFIG = ROOT / "train" / "configs" / "rewarddance_video.yaml"
QUALITY_QUESTION = 'Is this {media} of "{prompt}" clean and sharp?'


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (the state is a process-wide singleton)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _quality_pairs(root: Path, train: int, test: int, videos: int = 0) -> dict[str, Path]:
    """Quality-only pairs (one side clean, the other noisy): a signal a tiny model picks up in a few steps."""
    config = SyntheticConfig(
        image_splits=SplitSizes(train, test, test), video_splits=SplitSizes(videos, videos, videos),
        image_size=56, video_size=56, num_frames=4, tie_share=0.0, mixed_share=0.0,
        dim_weights={"VQ": 1.0, "MQ": 0.0, "TA": 0.0}, degradations=("noise",),
    )
    return generate_synthetic(root, seed=0, config=config)


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    return _quality_pairs(tmp_path_factory.mktemp("quality"), train=48, test=48)


def held_out_accuracy(model: RewardModel, jsonl: Path, dims: list[str], batch_size: int = 24) -> dict[str, float]:
    """Pair accuracy (without ties) of `model`'s reward against each label dimension in `dims` (the model
    is trained on one of them) on the pairs in `jsonl`, encoded by the head's own collator."""
    data = PreferenceDataset(jsonl, num_frames=4)
    collator = model.head.pair_collator(model.processor, CollateConfig())
    deltas = []
    for start in range(0, len(data), batch_size):
        batch = collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
        rewards = model.score(batch["inputs"])[:, 0]
        half = rewards.shape[0] // 2
        deltas.append(rewards[:half] - rewards[half:])
    delta = torch.cat(deltas).numpy()
    return {dim: pair_accuracy(delta, [label_to_int(r.label[dim]) for r in data.records]) for dim in dims}


def _run(config: Path, data: dict[str, Path], out: Path, modality: str, *extra: str) -> dict:
    # A --head_kwargs flag replaces the file's mapping: keep its other options, ask about quality, and read
    # yes against no (under LoRA a tiny random model's frozen LM head cannot put much mass on "yes").
    head_kwargs = {**yaml.safe_load(config.read_text())["head_kwargs"], "pointwise_question": QUALITY_QUESTION,
                   "probability": "binary"}
    return stage.main([
        "--config", str(config), "--output_dir", str(out),
        "--train_file", str(data[f"{modality}/train"]), "--val_file", str(data[f"{modality}/test"]),
        "--dimensions", "VQ", "--head_kwargs", json.dumps(head_kwargs),
        "--curriculum_steps", "0", "--warmup_steps", "0", "--save_steps", "0", "--eval_steps", "0",
        "--num_frames", "4", "--tuning_mode", "lora", "--lora_r", "16", "--learning_rate", "0.005", "--use_cpu", "true",
        *extra,
    ])


def _learning_check(data, out: Path, modality: str, *extra: str) -> tuple[float, float, dict]:
    metrics = _run(IMAGE_CONFIG if modality == "images" else VIDEO_CONFIG, data, out, modality, *extra)
    trained = RewardModel.from_pretrained(out)
    untrained = RewardModel.from_backbone(out / "tiny_backbone", head="yes_token", dimensions=["VQ"],
                                          head_options=trained.head.options(), dtype="float32").eval()
    test = data[f"{modality}/test"]
    return held_out_accuracy(untrained, test, ["VQ"])["VQ"], held_out_accuracy(trained, test, ["VQ"])["VQ"], metrics


def test_stage_trains_a_yes_token_model_with_lora(quality, tmp_path):
    out = tmp_path / "run"
    before, after, metrics = _learning_check(quality, out, "images", "--max_steps", "12", "--batch_size", "8",
                                             "--logging_steps", "4")
    # Outputs: a LoRA checkpoint of the yes_token head, with its prompt settings, and a manifest.
    manifest = read_manifest(out, expect_stage="reward")
    config = json.loads((out / "reward_config.json").read_text())
    assert config["head"]["name"] == "yes_token" and config["tuning"]["mode"] == "lora"
    assert config["head"]["options"]["pointwise_question"] == QUALITY_QUESTION
    assert config["head"]["options"]["bt_weight"] == 0.5  # from the config file
    assert (out / "adapter").is_dir() and not (out / "backbone").exists()
    assert manifest["metrics"]["steps"] == 12
    log = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "train/loss" in row] == [4, 8, 12]
    trained = RewardModel.from_pretrained(out)
    assert isinstance(trained.head, YesTokenHead)
    # The trainer's validation (log-odds differences) and P(yes) differences rank the pairs alike.
    assert metrics["val/accuracy/VQ"] == pytest.approx(after, abs=1e-9)
    # Learning check on held-out pairs: the trained model beats its untrained self clearly.
    print(f"untrained {before:.3f} -> trained {after:.3f}")
    assert after >= before + 0.2, (before, after)


@pytest.mark.slow
def test_stage_learning_strict(tmp_path):
    """Longer runs on more held-out pairs: images (LoRA) reach >= 0.9; videos (LoRA) gain >= 0.2."""
    data = _quality_pairs(tmp_path / "data", train=256, test=128, videos=48)
    before, after, _ = _learning_check(data, tmp_path / "images", "images", "--max_steps", "60", "--batch_size", "16",
                                       "--logging_steps", "20")
    print(f"images: untrained {before:.3f} -> trained {after:.3f}")
    assert after >= 0.9 and after >= before + 0.2, (before, after)
    AcceleratorState._reset_state(reset_partial_state=True)
    before, after, _ = _learning_check(data, tmp_path / "videos", "videos", "--max_steps", "40", "--batch_size", "8",
                                       "--logging_steps", "20")
    print(f"videos: untrained {before:.3f} -> trained {after:.3f}")
    assert after >= before + 0.2, (before, after)


@pytest.mark.slow
def test_shipped_image_config_learns_the_mixture(tmp_path):
    """rewarddance_image.yaml as shipped (full fine-tuning, softmax P(yes), VQ warm-up, 600 steps, ~3 CPU
    minutes) on the default synthetic image set: alignment and quality pairs, ties, mixed pairs."""
    data = generate_synthetic(tmp_path / "data", seed=0, config=SyntheticConfig(video_splits=SplitSizes(0, 0, 0)))
    out = tmp_path / "run"
    stage.main(["--config", str(IMAGE_CONFIG), "--output_dir", str(out), "--train_file", str(data["images/train"]),
                "--val_file", str(data["images/val"]), "--save_steps", "0", "--eval_steps", "0", "--use_cpu", "true"])
    trained = RewardModel.from_pretrained(out)
    untrained = RewardModel.from_backbone(out / "tiny_backbone", head="yes_token", dimensions=["overall"],
                                          head_options=trained.head.options(), dtype="float32").eval()
    dims = ["overall", "TA", "VQ"]
    before = held_out_accuracy(untrained, data["images/test"], dims)
    after = held_out_accuracy(trained, data["images/test"], dims)
    print(f"untrained {before} -> trained {after}")
    assert after["overall"] >= 0.7 and after["overall"] >= before["overall"] + 0.2, (before, after)
