"""Helpers shared by the stage tests: subprocess launches of a stage script (2-process CPU DDP for any stage;
a run SIGKILLed once a checkpoint exists) and the weights a reward run saved."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mmreward.manifest import INCOMPLETE_MARKER

ROOT = Path(__file__).resolve().parents[2]
STAGE_SCRIPT = ROOT / "train" / "reward.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """The test's environment for a stage subprocess: the repository importable, one OpenMP thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def ddp_command(args: list[str], num_processes: int = 2, script: Path = STAGE_SCRIPT,
                config_file: Path | None = None) -> list[str]:
    """`accelerate launch` of `script` (default: the reward stage) on `num_processes` CPU processes: DDP over gloo,
    or the mode of an accelerate `config_file` (train/accelerate/*.yaml; its GPU count and bf16 are overridden)."""
    mode = ["--config_file", str(config_file)] if config_file is not None else ["--multi_gpu"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(script), *args,
    ]


def run_ddp(args: list[str], num_processes: int = 2, timeout: float = 600, script: Path = STAGE_SCRIPT,
            config_file: Path | None = None, expect_exit: int = 0,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(ddp_command(args, num_processes, script, config_file),
                            env={**subprocess_env(), **(env_extra or {})}, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == expect_exit, result.stderr[-4000:]
    return result


def kill_when(command: list[str], ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Run `command` in a subprocess and SIGKILL it as soon as `ready()` holds; fails with the run's
    stderr if it exits first or `what` has not happened within `timeout` seconds."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                raise AssertionError(f"no {what} within {timeout} s (exit {proc.returncode}):\n"
                                     + stderr.read().decode(errors="replace")[-3000:])
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def kill_at_checkpoint(args: list[str], out: Path, step: int, timeout: float = 240) -> None:
    """Run the stage in a subprocess, SIGKILL it once `checkpoints/step_<step>` exists, and check that
    the killed run left an incomplete directory without a final model."""
    checkpoint = out / "checkpoints" / f"step_{step:08d}"
    kill_when([sys.executable, str(STAGE_SCRIPT), *args], checkpoint.exists, f"checkpoint step {step}", timeout)
    assert (out / INCOMPLETE_MARKER).exists() and not (out / "head.safetensors").exists()


def assert_non_finite_loss_stops_the_run(stage: Any, head_class: type, args: list[str], out: Path,
                                         monkeypatch: Any, capsys: Any) -> None:
    """The NaN guard of a reward stage: the 4th forward of `head_class` returns NaN (step 4: `args`
    must run no validation forward before it), with checkpoints every 2 of 6 steps. The stage exits
    with EXIT_NON_FINITE naming the step and the last good checkpoint, and leaves `out` incomplete
    with only that checkpoint."""
    calls = {"n": 0}
    original = head_class.forward

    def poisoned(self, hidden, lm_head=None):
        calls["n"] += 1
        result = original(self, hidden, lm_head)
        return result * float("nan") if calls["n"] == 4 else result

    monkeypatch.setattr(head_class, "forward", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        stage.main([*args, "--max_steps", "6", "--save_steps", "2"])
    assert exit_info.value.code == stage.EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "non-finite loss at step 4" in err and "step_00000002" in err
    assert (out / INCOMPLETE_MARKER).exists() and not (out / "manifest.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    """Every weight a finished run saved: head, full backbone and/or LoRA adapter (prefixed by file)."""
    weights = {f"head.{k}": v for k, v in load_file(out / "head.safetensors").items()}
    for prefix, path in (("", out / "backbone" / "model.safetensors"),
                         ("adapter.", out / "adapter" / "adapter_model.safetensors")):
        if path.exists():
            weights.update({prefix + k: v for k, v in load_file(path).items()})
    return weights


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
