"""The VLM-RM scripts follow the project's script conventions (mmreward.cli): `--help` answers without
importing torch, MuJoCo, open_clip, SB3 or TRL; bad input is one `error:` line, exit code 2, and no
output folder left behind."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["train/humanoid_sac.py", "train/standin_clip.py", "eval/humanoid_reward_curve.py",
           "eval/humanoid_scenes.py"]
HEAVY = ("torch", "mujoco", "open_clip", "stable_baselines3", "trl", "transformers", "gymnasium")

# Runs a script as __main__ with `--help` and prints the heavy modules it imported.
HELP_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_nothing_heavy(script):
    done = _run("-c", HELP_PROBE.format(heavy=HEAVY), script)
    assert done.returncode == 0, done.stderr
    assert "--output_dir" in done.stdout and "--config" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


@pytest.mark.parametrize("script, args, message", [
    ("train/standin_clip.py", ["--heldout_seed", "0"], "held-out frames would repeat"),
    ("eval/humanoid_scenes.py", ["--poses", "dancing"], "--poses: unknown ['dancing']"),
    ("eval/humanoid_scenes.py", ["--no_such_flag", "1"], "unknown option --no_such_flag"),
])
def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, script, args, message):
    """Cheap checks only here (a subprocess each); the other scripts' checks run in-process in their own tests."""
    out = tmp_path / "out"
    done = _run(script, "--output_dir", str(out), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()


def test_an_output_folder_of_another_stage_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    done = _run("train/standin_clip.py", "--output_dir", str(other))
    assert done.returncode == 2 and "not a stage's output" in done.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
