"""The VR-Thinker GRPO stage end to end: outputs and logs, SIGKILL + resume, and the reward rising while it trains."""

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from mmreward.manifest import INCOMPLETE_MARKER, RunDirError, read_manifest
from mmreward.training.distributed import DistributedModeError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vrt_grpo as stage  # noqa: E402  (train/vrt_grpo.py, the script under test)
from stage_helpers import run_ddp, subprocess_env  # noqa: E402
from vrt_tiny_judge import relabelled, synthetic_videos, tiny_judge  # noqa: E402


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_videos(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def judge(tmp_path_factory, data):
    return tiny_judge(tmp_path_factory.mktemp("judge") / "sft", data / "videos" / "train.jsonl")


def _args(judge, data, out, *extra):
    return [
        "--model_path", str(judge), "--data", str(data), "--output_dir", str(out), "--use_cpu", "true",
        "--torch_threads", "1", "--max_new_tokens", "64", "--learning_rate", "1e-3", "--seed", "5", *extra,
    ]


SMOKE = ["--max_steps", "3", "--save_steps", "1", "--pairs_per_step", "1", "--group_size", "4",
         "--micro_batch_rows", "3", "--updates_per_rollout", "2", "--kl_coef", "0.05", "--entropy_coef", "0.01"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, judge, data):
    """The smoke run; what it printed is kept next to its folder (console.txt: stderr, then stdout)."""
    out = tmp_path_factory.mktemp("grpo") / "straight"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        metrics = stage.main(_args(judge, data, out, *SMOKE, "--eval_pairs", "2"))
    (out.parent / "console.txt").write_text(stderr.getvalue() + stdout.getvalue())
    AcceleratorState._reset_state(reset_partial_state=True)
    return out, metrics


def test_progress_lines_and_the_closing_summary(straight):
    """Not a terminal here: a plain progress line per logged step (with the mean reward), and a last line naming the
    output folder and the fixed eval set's figures."""
    out, metrics = straight
    lines = (out.parent / "console.txt").read_text().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    assert all(" reward " in line and "steps/s" in line for line in steps)
    assert lines[-1].startswith(f"done: {metrics['steps']} GRPO steps") and str(out) in lines[-1]
    assert "eval end: reward" in lines[-1] and "overall accuracy" in lines[-1]


def test_stage_outputs_logs_and_reloads(straight, judge):
    out, metrics = straight
    manifest = read_manifest(out, expect_stage="vrt_grpo")
    assert manifest["inputs"]["model_stage"] == "vrt_sft" and manifest["metrics"]["steps"] == 3
    assert {"model.safetensors", "vr_thinker.json", "resolved_config.yaml"} <= manifest["checksums"].keys()
    assert (out / "example_trace.html").read_text().count("<img") >= 2
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_00000001", "step_00000002"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    log = _log(out)
    steps = [row for row in log if "reward/mean" in row]
    assert [row["step"] for row in steps] == [1, 2, 3]
    for key in ("reward/accuracy", "reward/format", "reward/curiosity", "reward/calls", "accuracy/OA",
                "tool_calls/mean", "response_length/mean", "kl", "clip/fraction", "clip/low", "clip/high", "entropy",
                "grad_norm"):
        assert all(np.isfinite(row[key]) for row in steps), key
    assert any(row["kl"] > 0 for row in steps[1:])  # the policy moved away from the reference
    evals = [row for row in log if "eval/reward" in row]
    assert [row["step"] for row in evals] == [0, 3] and evals[0]["eval/episodes"] == 2
    assert metrics["eval_start"]["eval/reward"] == evals[0]["eval/reward"]
    trained, start = _weights(out), load_file(judge / "model.safetensors")
    changed = {name for name in trained if not torch.equal(trained[name], start[name])}
    assert changed and all(not name.startswith("model.visual.") for name in changed)  # vision tower frozen
    assert json.loads((out / "vr_thinker.json").read_text()) == json.loads((judge / "vr_thinker.json").read_text())
    assert manifest["inputs"]["protocol"]["preset"] == "vr-thinker"
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    # Settings the config left unset are the preset's (the official objective); the smoke run's own stay.
    assert (resolved["clip_high"], resolved["kl_in"], resolved["loss_aggregation"], resolved["top_k"]) == (
        0.35, "reward", "constant", 40)
    assert (resolved["kl_coef"], resolved["learning_rate"], resolved["later_temperature"]) == (0.05, 1e-3, 0.9)


def test_refuses_an_unfinished_model_dir(tmp_path, judge, data):
    (judge / INCOMPLETE_MARKER).write_text("x")
    try:
        with pytest.raises(RunDirError, match="did not finish"):
            stage.main(_args(judge, data, tmp_path / "out", "--max_steps", "1"))
    finally:
        (judge / INCOMPLETE_MARKER).unlink()


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"])
def test_a_sharded_launch_is_refused(flag, tmp_path, judge, data, monkeypatch):
    """The loop does not support DeepSpeed / FSDP (full-model rollouts and reference copy): a launch asking for
    them stops before anything is written, instead of training as DDP (which accelerate falls back to on CPU)."""
    monkeypatch.setenv(flag, "true")
    with pytest.raises(DistributedModeError, match="GRPO loop runs on one process or DDP, not (deepspeed|fsdp).*vrt_grpo_trl"):
        stage.main(_args(judge, data, tmp_path / "out", "--max_steps", "1"))
    assert not (tmp_path / "out").exists()


def test_sigkill_then_resume_gives_identical_weights(straight, judge, data, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train" / "vrt_grpo.py"), *_args(judge, data, killed, *SMOKE,
                                                                                          "--eval_pairs", "2")],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000002").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (killed / INCOMPLETE_MARKER).exists() and not (killed / "manifest.json").exists()
    resumed = stage.main(_args(judge, data, killed, *SMOKE, "--eval_pairs", "2"))
    assert resumed["resumed_from"].endswith("step_00000002") and resumed["steps"] == 3
    a, b = _weights(killed), _weights(straight[0])
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [row["step"] for row in _log(killed) if "reward/mean" in row]
    assert steps == [1, 2, 3]  # lines a killed run wrote after its last checkpoint are not duplicated


def test_trl_baseline_runs_without_memory_window(judge, data, tmp_path, monkeypatch, capsys):
    import vrt_grpo_trl as baseline

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    out = tmp_path / "trl"
    metrics = baseline.main(["--model_path", str(judge), "--data", str(data), "--output_dir", str(out),
                             "--num_generations", "4", "--per_device_train_batch_size", "4", "--max_steps", "2",
                             "--max_completion_length", "64", "--use_cpu", "true", "--report_to", "none",
                             "--logging_steps", "1", "--save_strategy", "no", "--seed", "1"])
    manifest = read_manifest(out, expect_stage="vrt_grpo_trl")
    assert manifest["metrics"]["steps"] == 2 and len(metrics["log"]) == 2
    assert all(np.isfinite(row["reward"]) for row in metrics["log"])
    assert json.loads((out / "vr_thinker.json").read_text())["preset"]["limits"]["memory_window"] is None
    last = capsys.readouterr().out.splitlines()[-1]  # the closing summary names the folder and the rewards
    assert last.startswith("done: 2 GRPO steps") and "mean reward" in last and str(out) in last


def _learning_run(judge, data, out, steps: int) -> list[dict]:
    target = relabelled(data / "videos" / "train.jsonl", "a", "always_a.jsonl")
    stage.main(_args(judge, str(target), out, "--max_steps", str(steps), "--pairs_per_step", "2", "--group_size", "8",
                     "--micro_batch_rows", "16", "--kl_coef", "0", "--temperature", "0.7",
                     "--eval_records", str(target), "--eval_pairs", "4", "--eval_samples", "4",
                     "--eval_greedy", "false"))
    return _log(out)


def test_grpo_raises_the_reward_on_a_fixed_set(judge, data, tmp_path):
    """The tiny judge answers in format with random verdicts; rewarding 'Video 1' on every pair must move it there
    within a few steps: the fixed set's reward (same sampling seed each time) and the smoothed training reward rise.
    The reward is the preset's official one (accuracy only, as no trace calls the tool). Measured: fixed-set reward
    0.375 -> 0.94, mean training reward of the first / last 3 steps 0.46 -> 0.83 (10 steps, about 2.5 minutes on 2
    busy CPU cores)."""
    log = _learning_run(judge, data, tmp_path / "learn", 10)
    evals = [row["eval/reward"] for row in log if "eval/reward" in row]
    rewards = [row["reward/mean"] for row in log if "reward/mean" in row]
    assert evals[-1] > evals[0] + 0.25, evals
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards


@pytest.mark.slow
def test_grpo_learns_the_labels_of_each_pair(judge, data, tmp_path):
    """Stricter: real labels (they differ between pairs), so the policy has to tell the pairs apart. Measured: overall
    accuracy on the fixed set 0.28 -> 0.44 -> 0.47 -> 0.50 and reward 0.78 -> 0.92 -> 0.97 -> 1.00 at steps 0, 20, 40,
    60 (95 s on 2 idle CPU cores, about 7 minutes on busy ones)."""
    out = tmp_path / "labels"
    stage.main(_args(judge, data, out, "--max_steps", "60", "--pairs_per_step", "2", "--group_size", "8",
                     "--micro_batch_rows", "16", "--kl_coef", "0", "--temperature", "0.7", "--eval_records",
                     str(data / "videos" / "train.jsonl"), "--eval_pairs", "4", "--eval_samples", "8",
                     "--eval_greedy", "false", "--eval_steps", "20"))
    log = _log(out)
    evals = [row for row in log if "eval/reward" in row]
    assert evals[-1]["eval/accuracy/OA"] >= evals[0]["eval/accuracy/OA"] + 0.1, evals
    assert evals[-1]["eval/reward"] > evals[0]["eval/reward"] + 0.1, evals


@pytest.mark.slow
def test_ddp_two_cpu_processes(judge, data, tmp_path):
    out = tmp_path / "ddp"
    run_ddp(_args(judge, data, out, *SMOKE, "--eval_pairs", "3"), script=ROOT / "train" / "vrt_grpo.py")
    metrics = read_manifest(out, expect_stage="vrt_grpo")["metrics"]
    assert metrics["num_processes"] == 2 and metrics["steps"] == 3
    assert metrics["eval_end"]["eval/episodes"] == 3  # the eval pairs are split over the processes and gathered
