"""Every script a user runs (train/, eval/, data/, bench/, demo/) answers `--help` quickly with its purpose, and turns a
mistake into one line and exit code 2, never a traceback.

Scripts are found, not listed: a new script is checked the day it is added.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mmreward.cli import run
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_DIRS = ("train", "eval", "data", "bench", "demo")
# Measurement programs import what they measure (torch, transformers) before parsing; their help is not
# held to the 2-second bar of the commands users type to train, evaluate and prepare data.
FAST_HELP_DIRS = ("train", "eval", "data", "demo")
HELP_CPU_SECONDS = 2.0


def _scripts() -> list[Path]:
    found = []
    for folder in SCRIPT_DIRS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
                found.append(path)
    return found


SCRIPTS = _scripts()
IDS = [str(p.relative_to(ROOT)) for p in SCRIPTS]


def _run_in_process(script: Path, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a script's `main` through `mmreward.cli.run` as `python script.py argv` would; (exit code, out, err)."""
    with pytest.raises(SystemExit) as exited:
        run(load_script(script).main, argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_every_script_directory_has_scripts():
    for folder in SCRIPT_DIRS:
        assert any(p.parent.name == folder for p in SCRIPTS), folder


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_help_shows_the_purpose(script, capsys):
    code, out, _ = _run_in_process(script, ["--help"], capsys)
    assert code == 0
    first_line = script.read_text(encoding="utf-8").split('"""')[1].strip().splitlines()[0]
    assert first_line[:60] in " ".join(out.split()), "the help shows the script's docstring"
    assert "--debug" in out
    if "ScriptParser" in script.read_text(encoding="utf-8"):
        assert "--config" in out


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_a_misspelled_flag_is_one_line_and_exit_2(script, tmp_path, capsys):
    code, _, err = _run_in_process(script, ["--no_such_flagg", "1", "--out", str(tmp_path / "out")], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "--no_such_flagg" in lines[0]
    assert not (tmp_path / "out").exists()


FAST = [p for p in SCRIPTS if p.parent.name in FAST_HELP_DIRS]


@pytest.mark.parametrize("script", FAST, ids=[str(p.relative_to(ROOT)) for p in FAST])
def test_help_answers_within_two_cpu_seconds(script):
    """CPU time of a fresh `python script.py --help` (robust to a loaded machine, unlike wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 0, result.stderr
    assert cpu < HELP_CPU_SECONDS, f"--help took {cpu:.1f} CPU s"
