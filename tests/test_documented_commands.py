"""The commands the README and the scripts' docstrings show work as written, in order, on a fresh folder
(after `make_synthetic.py`), with tiny sizes appended so that each runs in seconds.

Commands are read from the documents, not copied here. A command that names paths only its user has
(`/models/...`, `DIR`, `FILE`, `...`) or starts several processes (`accelerate launch`, tested in
tests/train/test_sharded_stages.py) is left out; every other one runs, and exits with 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from mmreward.cli import run
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"/models/|/ckpt/|/path/|/data/|/tmp/|\bDIR\b|\bFILE\b|\bOUT\b|\bCKPT\b|DATA/|\.\.\.|\[--|\$|"
                         r"\bA B\b|^accelerate ")
# Flags appended to a documented command so that it runs in seconds (later flags override earlier ones).
TINY: dict[str, list[str]] = {
    "data/make_synthetic.py": ["--image-sizes", "96,16,16", "--video-sizes", "32,8,8"],
    "train/reward.py": ["--max_steps", "2", "--eval_steps", "0", "--save_steps", "0"],
    "train/vrt_sft.py": ["--max_steps", "2", "--max_pairs", "4", "--eval_pairs", "0"],
    "train/vrt_rejection.py": ["--max_pairs", "2", "--samples_per_pair", "2", "--dtype", "float32"],
    "train/vrt_grpo.py": ["--max_steps", "1", "--max_pairs", "2", "--group_size", "2", "--eval_pairs", "0",
                          "--save_steps", "0"],
    "train/vrt_grpo_trl.py": ["--max_steps", "1", "--max_pairs", "2", "--num_generations", "2",
                              "--per_device_train_batch_size", "2", "--max_completion_length", "128"],
    "train/humanoid_sac.py": ["--total_timesteps", "50", "--learning_starts", "10", "--eval_freq", "50",
                              "--checkpoint_freq", "50", "--eval_episodes", "1"],
    "eval/humanoid_scenes.py": ["--poses", "standing", "--repeats", "1", "--render_size", "32"],
    "train/standin_clip.py": ["--steps", "3", "--batch_size", "8", "--trajectories_per_pose", "1",
                              "--points_per_trajectory", "3", "--fall_episodes", "1",
                              "--heldout_trajectories_per_pose", "1", "--heldout_fall_episodes", "0"],
    "eval/humanoid_reward_curve.py": ["--num_points", "3", "--alphas", "0", "1",
                                      "--heldout_trajectories_per_pose", "1"],
}
# The scripts whose docstrings show commands, in the order a user follows them (each needs the outputs of the
# ones before it); a docstring's own commands keep their order.
DOC_ORDER = ["data/make_synthetic.py", "train/reward.py", "eval/preference.py", "eval/compare.py",
             "eval/master_key.py", "train/vrt_sft.py", "train/vrt_rejection.py", "train/vrt_grpo.py",
             "train/vrt_grpo_trl.py", "eval/humanoid_scenes.py", "train/standin_clip.py", "train/humanoid_sac.py",
             "eval/humanoid_reward_curve.py"]


def _shell_lines(text: str) -> list[str]:
    """Lines that start a command (`python ...`, `VAR=x python ...`, `accelerate ...`), continuations joined."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        elif not re.match(r"^([A-Z_]+=\S+ )*(python|accelerate) ", line):
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        commands.append(line.split("  #")[0].strip())
    return commands


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    return [c for block in blocks for c in _shell_lines(block)]


def _runnable(commands: list[str]) -> list[tuple[str, list[str]]]:
    return [_target(c) for c in commands if not PLACEHOLDER.search(c)]


def _docstring_commands() -> list[str]:
    commands, documented = [], set()
    for folder in ("train", "eval", "data"):
        for path in sorted((ROOT / folder).glob("*.py")):
            doc = path.read_text(encoding="utf-8").split('"""')
            if len(doc) > 1 and _runnable(_shell_lines(doc[1])):
                documented.add(str(path.relative_to(ROOT)))
    missing = documented - set(DOC_ORDER)
    assert not missing, f"{sorted(missing)} document commands: add them to DOC_ORDER (and their tiny flags to TINY)"
    for name in DOC_ORDER:
        doc = (ROOT / name).read_text(encoding="utf-8").split('"""')[1]
        commands += _shell_lines(doc.replace("\\\\\n", "\\\n"))  # a raw `\\` line end in the source
    return commands


def _target(command: str) -> tuple[str, list[str]]:
    """(script path or module, its arguments) of `python script.py args` / `python -m module args`."""
    words = shlex.split(command)
    while "=" in words[0]:
        words.pop(0)  # environment settings such as MUJOCO_GL=egl (set by the test session already)
    assert words[0] == "python", command
    if words[1] == "-m":
        return words[2], words[3:]
    return words[1], words[2:]


def _run_command(script: str, args: list[str]) -> None:
    if script.endswith(".py"):
        module = load_script(script)
    else:
        module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exited:
        run(module.main, [*args, *TINY.get(script, [])])
    assert exited.value.code == 0, f"{script} {shlex.join(args)} exited with {exited.value.code}"


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """A folder that looks like a fresh clone to relative paths: the project's script and config folders, no runs/."""
    for folder in ("train", "eval", "data", "bench", "tests"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_documents_show_commands_to_run():
    readme, docstrings = _runnable(_readme_commands()), _runnable(_docstring_commands())
    assert [s for s, _ in readme][:3] == ["data/make_synthetic.py", "train/reward.py", "eval/preference.py"]
    assert {s for s, _ in docstrings} >= {"data/make_synthetic.py", "train/reward.py", "eval/preference.py",
                                          "eval/compare.py", "eval/master_key.py"}


def test_readme_commands_work_as_written(fresh_clone):
    for script, args in _runnable(_readme_commands()):
        _run_command(script, args)
    assert (fresh_clone / "runs" / "reward_image" / "manifest.json").is_file()


@pytest.mark.slow
def test_docstring_commands_work_as_written(fresh_clone):
    for script, args in _runnable(_docstring_commands()):
        _run_command(script, args)
