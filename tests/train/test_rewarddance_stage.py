"""The reward stage with the yes_token head (RewardDance config): outputs, LoRA and full fine-tuning,
2-process CPU DDP, SIGKILL + resume, the NaN guard, learning checks."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig
from mmreward.data.dataset import PreferenceDataset
from mmreward.data.media import MediaConfig
from mmreward.data.records import label_to_int
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.manifest import read_manifest
from mmreward.metrics import pair_accuracy
from mmreward.model import RewardModel
from mmreward.heads.yes_token import YesTokenHead

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
import reward as stage  # noqa: E402  (train/reward.py, the script under test)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_helpers import (  # noqa: E402
    assert_non_finite_loss_stops_the_run,
    assert_same_weights,
    kill_at_checkpoint,
    run_ddp,
    saved_weights,
)

IMAGE_CONFIG = ROOT / "train" / "configs" / "rewarddance_image.yaml"
VIDEO_CONFIG = ROOT / "train" / "configs" / "rewarddance_video.yaml"
QUALITY_QUESTION = 'Is this {media} of "{prompt}" clean and sharp?'


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
    data = PreferenceDataset(jsonl, MediaConfig(num_frames=4))
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
    assert config["head"]["options"]["bt_weight"] == 0.0  # the paper's objective: the CE on the verdict alone
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


def _stage_args(tiny: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """rewarddance_image.yaml (full fine-tuning, softmax P(yes), CE on the verdict, a VQ-only warm-up that ends at
    step 6) on the quality pairs with small batches: the run the DDP / resume / NaN tests repeat."""
    return [
        "--config", str(IMAGE_CONFIG), "--backbone", str(tiny), "--output_dir", str(out),
        "--train_file", str(data["images/train"]), "--val_file", str(data["images/test"]),
        "--batch_size", "4", "--eval_batch_size", "16", "--logging_steps", "2", "--curriculum_steps", "6",
        "--eval_steps", "0", "--save_steps", "0", "--torch_threads", "1", "--use_cpu", "true", "--seed", "3", *extra,
    ]


def _changed_from_untrained(tiny: Path, out: Path) -> set[str]:
    """Names of the saved weights that differ from the untrained backbone's (LoRA: non-zero B matrices)."""
    weights = saved_weights(out)
    if (out / "adapter").exists():
        return {name for name, value in weights.items() if "lora_B" in name and value.abs().sum() > 0}
    untrained = load_file(tiny / "model.safetensors")
    return {name for name, value in weights.items() if name in untrained and not torch.equal(value, untrained[name])}


def test_shipped_configs_train_the_papers_objective_and_the_bt_variant_is_its_own_config():
    """RewardDance's objective is the cross-entropy on the verdict token: the shipped configs use it
    alone; rewarddance_image_bt.yaml is the same image run with a Bradley-Terry term added."""
    def options(path: Path) -> tuple[dict, dict]:
        model_args, data_args, train_cfg = stage.parse_args(["--config", str(path)])
        everything = {**vars(model_args), **vars(data_args), **vars(train_cfg)}
        return model_args.head_options(), everything

    for config in (IMAGE_CONFIG, VIDEO_CONFIG):
        head, _ = options(config)
        assert head["ce_weight"] == 1.0 and head.get("bt_weight", 0.0) == 0.0, config.name
    bt_head, bt_all = options(IMAGE_CONFIG.with_name("rewarddance_image_bt.yaml"))
    ce_head, ce_all = options(IMAGE_CONFIG)
    assert bt_head == {**ce_head, "bt_weight": 0.5}
    differs = {key for key in ce_all if ce_all[key] != bt_all[key]}
    assert differs == {"head_kwargs", "output_dir"}, differs


def test_full_fine_tuning_trains_the_lm_head_and_reloads(tiny, quality, tmp_path):
    out = tmp_path / "full"
    metrics = stage.main(_stage_args(tiny, quality, out, "--max_steps", "3"))
    config = json.loads((out / "reward_config.json").read_text())
    assert config["head"]["name"] == "yes_token" and config["tuning"]["mode"] == "full"
    assert config["head"]["options"]["probability"] == "softmax"
    assert (out / "backbone" / "model.safetensors").is_file() and not (out / "adapter").exists()
    changed = _changed_from_untrained(tiny, out)
    # The verdict is read from the LM head, so it trains with the language model; the vision tower is frozen.
    assert "lm_head.weight" in changed and any(".layers." in name for name in changed)
    assert not any("visual" in name for name in changed)
    trained = RewardModel.from_pretrained(out)
    assert isinstance(trained.head, YesTokenHead) and trained.tuning.mode == "full"
    # The reloaded model ranks the held-out pairs as the trainer's final validation did.
    assert held_out_accuracy(trained, quality["images/test"], ["overall"])["overall"] == pytest.approx(
        metrics["val/accuracy/overall"], abs=1e-9)


@pytest.mark.parametrize("tuning", ["full", pytest.param("lora", marks=pytest.mark.slow)])  # ~30 s each
def test_ddp_two_cpu_processes_end_with_same_weights(tiny, quality, tmp_path, tuning):
    out = tmp_path / "ddp"
    run_ddp(_stage_args(tiny, quality, out, "--max_steps", "3", "--tuning_mode", tuning, "--freeze_vision", "false",
                        "--max_val_records", "8"))
    metrics = read_manifest(out, expect_stage="reward")["metrics"]
    assert metrics["num_processes"] == 2 and metrics["steps"] == 3 and metrics["val/pairs"] == 8
    digests = metrics["replica_weight_sha256"]  # each rank saw other pairs: equal only if gradients were averaged
    assert len(digests) == 2 and digests[0] == digests[1]
    changed = _changed_from_untrained(tiny, out)
    assert changed
    if tuning == "full":  # the vision tower trains too here (--freeze_vision false)
        assert any("visual" in name for name in changed)


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_sigkill_then_resume_gives_identical_weights(tiny, quality, tmp_path, tuning):
    """Killed after the step-4 checkpoint, resumed across the end of the warm-up: the same weights as a run
    that was never interrupted."""
    def args(out: Path) -> list[str]:
        return _stage_args(tiny, quality, out, "--max_steps", "12", "--save_steps", "4", "--tuning_mode", tuning,
                           "--max_val_records", "8")

    killed = tmp_path / "killed"
    kill_at_checkpoint(args(killed), killed, step=4)
    resumed = stage.main(args(killed))
    assert resumed["resumed_from"] is not None and resumed["steps"] == 12
    AcceleratorState._reset_state(reset_partial_state=True)
    straight = tmp_path / "straight"
    uninterrupted = stage.main(args(straight))
    assert uninterrupted["resumed_from"] is None
    weights = saved_weights(killed)
    assert len(weights) > 10
    assert_same_weights(weights, saved_weights(straight))
    assert resumed["val/accuracy/overall"] == uninterrupted["val/accuracy/overall"]
    assert _changed_from_untrained(tiny, killed)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, quality, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"  # one forward per step (no validation): the 4th head forward is step 4
    assert_non_finite_loss_stops_the_run(stage, YesTokenHead, _stage_args(tiny, quality, out), out, monkeypatch,
                                         capsys)


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


@pytest.mark.slow
def test_shipped_video_config_learns_visual_quality(tmp_path):
    """rewarddance_video.yaml as shipped (full fine-tuning, softmax P(yes) to a visual-quality question, 4 frames,
    300 steps, 1-3 CPU minutes) on the default synthetic video mixture (noise and blur losers, motion and
    alignment pairs, ties): held-out VQ accuracy rises clearly above the untrained model's."""
    config = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(384, 32, 192))
    data = generate_synthetic(tmp_path / "data", seed=0, config=config)
    out = tmp_path / "run"
    metrics = stage.main(["--config", str(VIDEO_CONFIG), "--output_dir", str(out),
                          "--train_file", str(data["videos/train"]), "--val_file", str(data["videos/val"]),
                          "--save_steps", "0", "--eval_steps", "0", "--use_cpu", "true"])
    trained = RewardModel.from_pretrained(out)
    assert trained.dimensions == ["VQ"] and trained.tuning.mode == "full"
    untrained = RewardModel.from_backbone(out / "tiny_backbone", head="yes_token", dimensions=["VQ"],
                                          head_options=trained.head.options(), dtype="float32").eval()
    dims = ["VQ", "MQ", "TA", "overall"]
    before = held_out_accuracy(untrained, data["videos/test"], dims)
    after = held_out_accuracy(trained, data["videos/test"], dims)
    print(f"untrained {before} -> trained {after} in {metrics['train_seconds']:.0f} s")
    assert abs(before["VQ"] - 0.5) < 0.1, before
    assert after["VQ"] >= 0.75 and after["VQ"] >= before["VQ"] + 0.25, (before, after)
