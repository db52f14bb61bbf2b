"""Smoke run of train/humanoid_sac.py (tiny random CLIP): outputs, rollout relabelling, resume, SIGKILL + resume."""

import json
import random
import sys
from pathlib import Path

import av
import pytest

from mmreward.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "train"))
from stage_helpers import kill_when  # noqa: E402  (the stage tests' SIGKILL helper)

CPU_CONFIG = ROOT / "train" / "configs" / "humanoid_sac_cpu.yaml"
SMALL = ["--episode_length", "10", "--total_timesteps", "40", "--learning_starts", "10", "--train_freq", "10",
         "--gradient_steps", "2", "--batch_size", "16", "--eval_freq", "20", "--checkpoint_freq", "20"]


@pytest.fixture(scope="module")
def trainer(stage_script):
    with stage_script("train/humanoid_sac.py") as module:
        yield module


def _frame_count(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_short_run_writes_its_outputs_and_resumes(trainer, tmp_path):
    out = tmp_path / "run"
    manifest = trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(out), "--reward_mode", "rollout", *SMALL])
    assert manifest == read_manifest(out, expect_stage="humanoid_sac")
    metrics = manifest["metrics"]
    assert metrics["env_steps"] == 40 and metrics["pose"] == "kneeling" and metrics["clip_random_weights"]
    assert metrics["eval_success_rate"] in (0.0, 1.0)
    assert "RANDOM" in manifest["note"]
    history = json.loads((out / "eval_history.json").read_text())
    assert [h["step"] for h in history] == [20, 40]
    assert _frame_count(out / history[-1]["video"]) == 11  # reset frame + 10 steps
    assert (out / "reward_curve.png").stat().st_size > 0 and (out / "model.zip").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "sac_40_steps.zip").is_file()
    assert (out / "checkpoints" / "sac_replay_buffer_40_steps.npz").is_file()
    assert metrics["replay_buffer_steps"] == 20  # 40 env steps over 2 envs

    resumed = trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(out), *SMALL,
                            "--total_timesteps", "60", "--resume", "true"])
    assert resumed["metrics"]["env_steps"] == 60 and resumed["metrics"]["env_steps_this_run"] == 20
    assert resumed["inputs"]["resumed_from"].endswith("sac_40_steps.zip")
    assert [h["step"] for h in json.loads((out / "eval_history.json").read_text())] == [20, 40, 60]


def test_bad_settings_are_refused(trainer, tmp_path):
    with pytest.raises(ValueError, match="reward_mode must be"):
        trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(tmp_path / "a"), "--reward_mode", "episode"])
    with pytest.raises(ValueError, match="scene must be one of"):
        trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(tmp_path / "c"), "--scene", "moon"])
    with pytest.raises(ValueError, match="render_path must be one of"):
        trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(tmp_path / "d"), "--render_path", "ray"])
    with pytest.raises(FileNotFoundError, match="no sac_<steps>_steps.zip checkpoint"):
        trainer.main(["--config", str(CPU_CONFIG), "--output_dir", str(tmp_path / "b"), "--resume", "true"])


def test_sigkill_at_a_random_checkpoint_then_resume_loses_and_repeats_nothing(trainer, tmp_path):
    """Killed (SIGKILL) right after a random one of its periodic checkpoints, a run resumed with --resume true
    continues the step count from that checkpoint with its replay buffer, and ends with every env step stored
    once and one evaluation per eval_freq."""
    out = tmp_path / "killed"
    args = ["--config", str(CPU_CONFIG), "--output_dir", str(out), "--reward_mode", "rollout", *SMALL,
            "--total_timesteps", "80"]
    kill_after = random.choice([20, 40, 60])  # checkpoints come at rollout starts: every 20 env steps here
    # subprocess_env keeps the suite's MUJOCO_GL=egl (tests/conftest.py) and sets one OpenMP thread.
    kill_when([sys.executable, str(ROOT / "train" / "humanoid_sac.py"), *args],
              (out / "checkpoints" / f"sac_{kill_after}_steps.zip").exists, f"checkpoint at {kill_after} steps")
    assert (out / "INCOMPLETE").exists() and not (out / "manifest.json").exists()
    saved = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("sac_*_steps.zip"))
    last = saved[-1]
    assert kill_after <= last < 80, saved
    assert not list((out / "checkpoints").glob("tmp_*"))  # nothing half-written left behind under a final name

    resumed = trainer.main([*args, "--resume", "true"])
    metrics = resumed["metrics"]
    assert resumed["inputs"]["resumed_from"].endswith(f"sac_{last}_steps.zip"), (kill_after, saved)
    assert metrics["env_steps"] == 80 and metrics["env_steps_this_run"] == 80 - last
    assert metrics["replay_buffer_steps"] == 40  # the checkpoint's transitions + the new ones: none lost
    assert [h["step"] for h in json.loads((out / "eval_history.json").read_text())] == [20, 40, 60, 80]
    assert read_manifest(out, expect_stage="humanoid_sac")["metrics"] == metrics
