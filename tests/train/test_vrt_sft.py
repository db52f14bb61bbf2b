"""The VR-Thinker SFT stage end to end: outputs, chaining through the manifest, frozen vision tower, LoRA merge,
the judge API on the result, and (slow) learning: format-valid rate on held-out pairs before vs after SFT."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from mmreward.data.records import read_records
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.manifest import read_manifest
from vr_thinker.cold_start import read_traces
from vr_thinker.judge import JUDGE_CONFIG_NAME, VRThinkerJudge, evaluate_judge
from vr_thinker.rollout import SamplingConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vrt_sft as stage  # noqa: E402  (train/vrt_sft.py, the script under test)
from stage_helpers import kill_when  # noqa: E402

# The config's CPU overrides of the vr-thinker preset (pools of 8 per video, short instruction texts) keep the steps
# cheap.
FAST = ["--motion_frames", "2", "--per_device_train_batch_size", "1", "--report_to", "none", "--logging_steps", "1",
        "--warmup_steps", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    config = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(24, 8, 0), num_frames=8,
                             video_size=48)
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, seed=0, config=config)
    return out


def run(*args: str) -> dict:
    return stage.main(["--config", str(ROOT / "train/configs/vrt_sft.yaml"), *FAST, *args])


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def is_vision(name: str) -> bool:
    return name.startswith("visual.")  # checkpoint names: visual.* (vision tower), model.* and lm_head (text)


def test_stage_writes_a_judge_and_chains_through_its_manifest(data, tmp_path, capsys):
    first = tmp_path / "sft"
    metrics = run("--model_path", "tiny", "--data", str(data), "--output_dir", str(first), "--max_pairs", "4",
                  "--max_steps", "1", "--eval_pairs", "2", "--eval_before", "true", "--eval_max_new_tokens", "4")
    last = capsys.readouterr().out.splitlines()[-1]  # the closing summary names the folder and the figures
    assert last.startswith(f"done: 1 steps on 4 traces ({metrics['rows']} rows), train loss ") and str(first) in last
    assert "eval before: format-valid" in last and "eval after: format-valid" in last
    manifest = read_manifest(first, expect_stage="vrt_sft")
    assert manifest["metrics"]["traces"] == 4 and manifest["metrics"]["train_steps"] == 1
    assert manifest["inputs"]["data"] == str(data)
    protocol = manifest["inputs"]["protocol"]
    assert protocol["preset"] == "vr-thinker" and "frames.per_video=8" in protocol["preset_overrides"]
    assert protocol["dimensions"] == ["TA", "VQ", "MQ"]
    for key in ("eval_before", "eval_after"):
        assert metrics[key]["pairs"] == 2 and 0.0 <= metrics[key]["format_valid_rate"] <= 1.0
    assert sum(metrics["tool_calls_per_trace"].values()) == 4 and metrics["rows"] >= 4
    resolved = yaml.safe_load((first / "resolved_config.yaml").read_text())
    assert resolved["preset"] == "vr-thinker" and resolved["max_steps"] == 1
    assert (first / "example_trace.html").read_text().count("<img ") >= 8
    assert "(held out)" in (first / "eval_trace.html").read_text()
    traces = read_traces(first / "traces.jsonl")
    assert len(traces) == 4 and traces[0].preset.frames.per_video == 8 and traces[0].preset.name == "vr-thinker"
    saved = json.loads((first / JUDGE_CONFIG_NAME).read_text())
    assert saved["preset"]["frames"]["per_video"] == 8 and saved["preset"]["name"] == "vr-thinker"
    assert saved["preset"]["grpo"]["clip_high"] == 0.35 and [d["key"] for d in saved["dimensions"]] == ["TA", "VQ", "MQ"]

    # Full fine-tuning with the vision tower frozen: vision weights equal the input model's, the rest moved.
    before, after = weights(first / "tiny_backbone"), weights(first)
    assert before.keys() == after.keys()
    vision = [k for k in before if is_vision(k)]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if not is_vision(k))

    # Next stage: model and data from the first stage's directory (its traces.jsonl), LoRA merged on save.
    second = tmp_path / "sft2"
    metrics2 = run("--model_path", str(first), "--data", str(first), "--output_dir", str(second),
                   "--max_steps", "1", "--use_lora", "true", "--lora_r", "4", "--eval_pairs", "0")
    manifest2 = read_manifest(second, expect_stage="vrt_sft")
    assert manifest2["inputs"]["model_stage"] == "vrt_sft" and metrics2["source"]["kind"] == "stage"
    merged = weights(second)
    assert merged.keys() == after.keys()  # adapters merged: a plain checkpoint, no lora_ tensors
    assert all(torch.equal(after[k], merged[k]) for k in vision)
    changed = [k for k in after if not torch.equal(after[k], merged[k])]
    assert changed and all(k.startswith("model.layers.") and k.endswith("proj.weight") for k in changed)

    # The judge API on the stage output: verdicts, trace, HTML.
    judge = VRThinkerJudge.from_pretrained(second, sampling=SamplingConfig(do_sample=False, max_new_tokens=4))
    assert judge.preset.frames.per_video == 8 and [d.key for d in judge.dimensions] == ["TA", "VQ", "MQ"]
    record = read_records(data / "videos" / "val.jsonl")[0]
    result = judge.compare(record.prompt, record.a.video, record.b.video)
    assert result.status == "truncated" and not result.format_valid  # 4 tokens cannot hold a turn
    assert len(result.trace.turns) == 1 and len(result.trace.turns[0].generated_ids) == 4
    page = result.html(title=record.id, label=record.label)
    assert record.prompt in page and page.count("<img ") == 8
    scores = evaluate_judge(judge, [record])
    assert (scores.pairs, scores.format_valid_rate, scores.overall_accuracy) == (1, 0.0, 0.0)
    assert scores.statuses == {"truncated": 1}


def test_unfinished_input_stage_is_refused(data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "traces.jsonl").write_text("")
    (broken / "INCOMPLETE").write_text("started\n")
    with pytest.raises(Exception, match="did not finish"):
        run("--model_path", "tiny", "--data", str(broken), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
            "--eval_pairs", "0")


@pytest.mark.slow
def test_sft_makes_the_tiny_judge_produce_valid_episodes(data, tmp_path):
    """Learning check: greedy episodes on 8 held-out pairs before vs after 600 SFT steps on 24 brief teacher
    traces in the vr-thinker protocol (measured: see train/vr_thinker.sh; format-valid 0/8 -> >= .9)."""
    from mmreward.backbones.tiny import build_tiny_vlm

    # Eight heads learn the format faster than four.
    model = build_tiny_vlm(tmp_path / "tiny8", num_heads=8, num_kv_heads=4)
    metrics = run("--model_path", str(model), "--data", str(data), "--output_dir", str(tmp_path / "sft"),
                  "--teacher_style", "brief", "--max_steps", "600", "--learning_rate", "1e-2",
                  "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--logging_steps", "50",
                  "--eval_pairs", "8", "--eval_before", "true")
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert before["format_valid_rate"] == 0.0 and before["overall_accuracy"] == 0.0
    assert after["format_valid_rate"] >= 0.9
    assert after["overall_accuracy"] > before["overall_accuracy"]


def test_an_unfinished_model_dir_is_refused(tmp_path):
    """A killed stage leaves INCOMPLETE and no manifest; its directory is not taken as a model."""
    from accelerate import PartialState

    from mmreward.manifest import RunDirError

    broken = tmp_path / "killed_sft"
    broken.mkdir()
    (broken / "INCOMPLETE").write_text("started\n")
    with pytest.raises(RunDirError, match="did not finish"):
        stage.resolve_model(str(broken), tmp_path / "out", PartialState(cpu=True))


RESUME = ["--max_pairs", "4", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2",
          "--eval_pairs", "0", "--dataloader_num_workers", "0"]


def _finished_checkpoint(directory: Path) -> bool:
    """HF Trainer writes trainer_state.json after the weights, optimizer, scheduler and RNG state."""
    state = directory / "trainer_state.json"
    try:
        return json.loads(state.read_text())["global_step"] > 0
    except (OSError, ValueError, KeyError):
        return False


def _step_losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    return [(row["step"], row["loss"]) for row in history if "loss" in row]


def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path, single_torch_thread):
    """SIGKILL right after a random periodic checkpoint, then --resume_from_checkpoint: training continues at
    that step and ends with the weights and per-step losses of an uninterrupted run (CPU, deterministic)."""
    import random

    straight = tmp_path / "straight"
    run("--model_path", "tiny", "--data", str(data), "--output_dir", str(straight), *RESUME)
    AcceleratorState._reset_state(reset_partial_state=True)

    killed = tmp_path / "killed"
    kill_after = random.choice([2, 4])
    cmd = [sys.executable, str(ROOT / "train" / "vrt_sft.py"), "--config", str(ROOT / "train/configs/vrt_sft.yaml"),
           *FAST, "--model_path", "tiny", "--data", str(data), "--output_dir", str(killed), *RESUME]
    checkpoint = killed / "checkpoints" / f"checkpoint-{kill_after}"
    kill_when(cmd, lambda: _finished_checkpoint(checkpoint), checkpoint.name, timeout=300)
    assert (killed / "INCOMPLETE").exists() and not (killed / "manifest.json").exists()
    assert not (killed / "checkpoints" / "checkpoint-6").exists()

    metrics = run("--model_path", "tiny", "--data", str(data), "--output_dir", str(killed), *RESUME,
                  "--resume_from_checkpoint", str(checkpoint))
    assert metrics["train_steps"] == 6 and read_manifest(killed, expect_stage="vrt_sft")
    a, b = weights(killed), weights(straight)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = _step_losses(killed)
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]  # each step logged once: none lost, none repeated
    assert losses == _step_losses(straight)


def test_unknown_tiny_family_is_refused_naming_the_option(tmp_path):
    from mmreward.errors import UsageError

    with pytest.raises(UsageError, match="--model_path tiny:qwen9: unknown tiny family 'qwen9'"):
        stage.resolve_model("tiny:qwen9", tmp_path, state=None)
    assert not (tmp_path / "tiny_backbone").exists()
