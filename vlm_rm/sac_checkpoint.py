"""SAC checkpoints that survive a kill and load without unpickling.

SB3's own format is unsafe to load from a file anyone else could have written: `SAC.load` unpickles
(cloudpickle) every entry of the zip it cannot store as JSON (spaces, classes, schedules), and
`load_replay_buffer` unpickles the whole buffer. Here:

- the zip is still SB3's `model.save`, but it is loaded with every pickled entry replaced by the
  same attribute of a fresh model built from the run's config (`custom_objects`), so no pickle in it
  is ever read; weights and optimizer states are SB3's `.pth` files, read with `weights_only=True`;
- the replay buffer is a NumPy `.npz` of its arrays, read with `allow_pickle=False`;
- both are written under temporary names and renamed (buffer first, zip last), so a kill mid-save
  never leaves a checkpoint that `latest_sac_checkpoint` would pick half-written;
- `SACCheckpointCallback` saves at the start of a rollout: the previous rollout's transitions are in
  the buffer (relabelled, in rollout reward mode) and its gradient steps are done.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

from mmreward.errors import MmrewardError

PREFIX = "sac"
# ReplayBuffer arrays, all [buffer_size // n_envs, n_envs, ...]; `pos` and `full` say which rows hold data.
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
_ZIP = re.compile(rf"{PREFIX}_(\d+)_steps\.zip")


class SACCheckpointError(MmrewardError, ValueError):
    """A SAC checkpoint that cannot be loaded (the message names the file)."""


def checkpoint_paths(ckpt_dir: Path, steps: int) -> tuple[Path, Path]:
    """(model zip, replay buffer npz) of the checkpoint at `steps` env steps."""
    return ckpt_dir / f"{PREFIX}_{steps}_steps.zip", ckpt_dir / f"{PREFIX}_replay_buffer_{steps}_steps.npz"


def latest_sac_checkpoint(ckpt_dir: Path) -> tuple[Path, Path | None] | None:
    """Newest finished `sac_<steps>_steps.zip` and its replay buffer (None when it was saved without one)."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob(f"{PREFIX}_*_steps.zip") if (m := _ZIP.fullmatch(p.name))]
    if not found:
        return None
    steps, path = max(found)
    buffer = checkpoint_paths(ckpt_dir, steps)[1]
    return path, buffer if buffer.exists() else None


def save_sac_checkpoint(model: SAC, ckpt_dir: Path, with_buffer: bool) -> Path:
    """Write the checkpoint at `model.num_timesteps` (buffer, then zip; each atomically); returns the zip."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    zip_path, buffer_path = checkpoint_paths(ckpt_dir, model.num_timesteps)
    if with_buffer:
        buffer = model.replay_buffer
        rows = buffer.buffer_size if buffer.full else buffer.pos  # only rows that hold transitions
        tmp = buffer_path.with_name("tmp_" + buffer_path.name)
        with open(tmp, "wb") as handle:
            np.savez(handle, pos=np.int64(buffer.pos), full=np.bool_(buffer.full),
                     **{name: getattr(buffer, name)[:rows] for name in BUFFER_ARRAYS})
        os.replace(tmp, buffer_path)
    tmp = zip_path.with_name("tmp_" + zip_path.name)
    model.save(tmp)
    os.replace(tmp, zip_path)
    return zip_path


def load_sac_checkpoint(zip_path: Path, fresh: SAC, buffer_path: Path | None = None, **load_kwargs) -> SAC:
    """Load `zip_path` without unpickling anything; `fresh` is a new SAC built from the same config and env.

    The zip's pickled entries are taken from `fresh` (they are derived from the config: spaces,
    policy and buffer classes, schedules; last observations are dropped because the env is reset);
    everything else (step counters, hyperparameters) comes from its JSON, weights from its `.pth`
    files. `load_kwargs` go to `SAC.load` (e.g. `tensorboard_log`).
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise SACCheckpointError(f"{zip_path}: not a readable SB3 checkpoint ({err})") from err
    pickled = sorted(k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v)
    unknown = [k for k in pickled if not hasattr(fresh, k)]
    if unknown:
        raise SACCheckpointError(f"{zip_path}: pickled entries {unknown} have no counterpart in a fresh model; "
                                 "refusing to unpickle them")
    custom = {k: getattr(fresh, k) for k in pickled}
    model = SAC.load(zip_path, env=fresh.get_env(), device=fresh.device, custom_objects=custom, **load_kwargs)
    if buffer_path is not None:
        load_replay_buffer_arrays(model, buffer_path)
    return model


def load_replay_buffer_arrays(model: SAC, path: Path) -> None:
    """Fill `model.replay_buffer` from an `.npz` written by `save_sac_checkpoint` (no pickles allowed)."""
    buffer = model.replay_buffer
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in BUFFER_ARRAYS}
            pos, full = int(saved["pos"]), bool(saved["full"])
    except (OSError, KeyError, ValueError) as err:
        raise SACCheckpointError(f"{path}: not a readable replay buffer file ({err})") from err
    for name, array in arrays.items():
        target = getattr(buffer, name)
        if array.shape[1:] != target.shape[1:] or len(array) > len(target):
            raise SACCheckpointError(f"{path}: {name} has shape {array.shape}, the buffer holds {target.shape}")
        target[: len(array)] = array
    buffer.pos, buffer.full = pos, full


class SACCheckpointCallback(BaseCallback):
    """Every `every` env steps (at the next rollout start) write a checkpoint with `save_sac_checkpoint`."""

    def __init__(self, ckpt_dir: Path, every: int, with_buffer: bool) -> None:
        super().__init__()
        self.ckpt_dir, self.every, self.with_buffer = Path(ckpt_dir), every, with_buffer
        self.last_saved: int | None = None

    def _on_training_start(self) -> None:
        self.last_saved = self.num_timesteps  # a resumed run starts from a saved checkpoint

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self.last_saved >= self.every:
            save_sac_checkpoint(self.model, self.ckpt_dir, self.with_buffer)
            self.last_saved = self.num_timesteps

    def _on_step(self) -> bool:
        return True
