"""Which distributed mode a run asked for, building an Accelerator that really uses it, and refusing otherwise.

`accelerate launch --config_file train/accelerate/<mode>.yaml` tells the script what to use through environment
variables (`ACCELERATE_USE_DEEPSPEED`, `ACCELERATE_USE_FSDP`, `ACCELERATE_DEEPSPEED_*`, `FSDP_*`). accelerate 1.15
honours them only on accelerator devices: with `Accelerator(cpu=True)` it drops both plugins without a word and
trains as plain DDP. Here every mode runs on CPU too (gloo process group), which is how the tests check sharding
on a machine without GPUs:

- DeepSpeed: `Accelerator(cpu=False)` with a gloo process group. DeepSpeed picks its CPU accelerator by itself;
  its shared-memory communication op is skipped (`_skip_deepspeed_shm_op`), so nothing is compiled.
- FSDP2: accelerate has no CPU path, so the state is switched to FSDP after construction with the plugin the
  launcher described; `fully_shard` then shards over a CPU device mesh.

After construction `require_mode` compares the mode asked for with the one the Accelerator has and raises
`DistributedModeError` naming the reason when they differ. `describe_mode` is what the manifest records.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    InitProcessGroupKwargs,
)
from torch.distributed.fsdp import CPUOffloadPolicy

from mmreward.errors import MmrewardError

SINGLE, DDP, DEEPSPEED, FSDP = "single", "ddp", "deepspeed", "fsdp"


class DistributedModeError(MmrewardError, RuntimeError):
    """The launch asked for a distributed mode this process cannot have (the message says why)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_mode() -> str:
    """The mode `accelerate launch` (or the environment) asked for: deepspeed | fsdp | ddp | single."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return DEEPSPEED
    if _env_flag("ACCELERATE_USE_FSDP"):
        return FSDP
    return DDP if int(os.environ.get("WORLD_SIZE", "1")) > 1 else SINGLE


def actual_mode(acc: Accelerator) -> str:
    """The mode the Accelerator runs in."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return DEEPSPEED
    if acc.distributed_type == DistributedType.FSDP:
        return FSDP
    return DDP if acc.num_processes > 1 else SINGLE


def _deepspeed_missing() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        return f"DeepSpeed is not installed ({err}); install it with `pip install -e .[deepspeed]`"
    return None


def make_accelerator(use_cpu: bool, **kwargs: Any) -> Accelerator:
    """An Accelerator in the mode the launch asked for, on CPU when `use_cpu` or without a GPU.

    `kwargs` go to `Accelerator` (trackers, project_dir, gradient_accumulation_steps, ...). Raises
    `DistributedModeError` when the mode asked for cannot be had (DeepSpeed not installed, CPU training asked on a
    GPU machine with a sharded mode), so a run never trains in another mode than the one it was launched for.
    """
    mode = requested_mode()
    on_cpu = use_cpu or not torch.cuda.is_available()
    _check_requestable(mode, on_cpu)
    if mode == DEEPSPEED and on_cpu:
        _skip_deepspeed_shm_op()
        # cpu=False keeps the DeepSpeed plugin; the gloo group is what DeepSpeed's CPU accelerator communicates over.
        handlers = [*kwargs.pop("kwargs_handlers", []), InitProcessGroupKwargs(backend="gloo")]
        acc = Accelerator(cpu=False, kwargs_handlers=handlers, **kwargs)
    else:
        acc = Accelerator(cpu=on_cpu, **kwargs)
    adopt_requested_mode(acc)
    return acc


def _check_requestable(mode: str, on_cpu: bool) -> None:
    if mode == DEEPSPEED and (reason := _deepspeed_missing()):
        raise DistributedModeError(f"the launch asked for DeepSpeed but {reason}")
    if mode in (DEEPSPEED, FSDP) and on_cpu and torch.cuda.is_available():
        raise DistributedModeError(
            f"the launch asked for {mode} with use_cpu on a machine with a GPU; sharded CPU training needs the GPUs "
            "hidden (CUDA_VISIBLE_DEVICES=''), or drop use_cpu"
        )


def adopt_requested_mode(acc: Accelerator) -> None:
    """Make a freshly built Accelerator run in the launch's mode: switch a CPU process group to FSDP when FSDP was
    asked for (accelerate drops it on CPU), then `require_mode`."""
    mode = requested_mode()
    if mode == FSDP and acc.distributed_type == DistributedType.MULTI_CPU:
        _switch_to_fsdp(acc)
    require_mode(acc, mode)


def hf_trainer_device_args(use_cpu: bool) -> dict[str, Any]:
    """`TrainingArguments` overrides that give a transformers/TRL Trainer the launch's mode on CPU (none on GPUs).

    On CPU the Trainer needs `use_cpu` for a gloo DDP group (without it every process trains alone, as if
    single), except under DeepSpeed, which needs `use_cpu` off and a gloo group instead. The Trainer builds its
    own Accelerator: subclass it with `ModeCheckedTrainerMixin` first, so FSDP is switched on and the mode checked.
    """
    mode = requested_mode()
    on_cpu = use_cpu or not torch.cuda.is_available()
    _check_requestable(mode, on_cpu)
    if not on_cpu:
        return {}
    if mode == DEEPSPEED:
        _skip_deepspeed_shm_op()
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


class ModeCheckedTrainerMixin:
    """For a transformers `Trainer` subclass (`class T(ModeCheckedTrainerMixin, SFTTrainer)`): after the Trainer
    builds its Accelerator, FSDP is switched on where accelerate dropped it (CPU) and the mode actually used is
    checked against the launch's (`DistributedModeError` otherwise)."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        adopt_requested_mode(self.accelerator)
        self.is_fsdp_enabled = self.accelerator.distributed_type == DistributedType.FSDP


def _skip_deepspeed_shm_op() -> None:
    """Let DeepSpeed's CPU communication run over gloo instead of its shared-memory op.

    The op is compiled with the machine's C++ compiler the first time a process group starts (over a minute on a
    small machine, in every fresh environment) and only speeds up large CPU all-reduces; DeepSpeed falls back to
    gloo when it reports the op as incompatible, which is what this marks it as.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def settle_deepspeed_config(acc: Accelerator, **settings: Any) -> None:
    """Give the DeepSpeed config the stage's values for `settings` (top-level keys such as
    `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps`, `gradient_clipping`).

    A key the launch file leaves out or sets to "auto" takes the stage's value; a different explicit value is an
    error naming both, since DeepSpeed (not the stage) accumulates and clips, and would silently use its own.
    """
    config = acc.state.deepspeed_plugin.deepspeed_config
    for key, value in settings.items():
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            raise DistributedModeError(
                f"the DeepSpeed config sets {key}={given} but the stage runs with {value}; remove it from the "
                "launch config (the stage fills it in) or make them equal"
            )
        config[key] = value


def _switch_to_fsdp(acc: Accelerator) -> None:
    """Put a CPU (gloo) Accelerator into FSDP mode with the plugin the launcher's FSDP_* variables describe."""
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* from the environment, as accelerate does on GPUs
    state = AcceleratorState()
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if acc.state.mixed_precision != "no":
        plugin.set_mixed_precision(acc.state.mixed_precision)


def require_mode(acc: Accelerator, mode: str) -> None:
    """Raise `DistributedModeError` when `acc` does not run in `mode` (the one the launch asked for)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:
        raise DistributedModeError(
            f"the launcher started {launched} processes but the Accelerator runs as {acc.num_processes} "
            f"({acc.distributed_type}, device {acc.device}): each would train alone on its own data"
        )
    got = actual_mode(acc)
    if got == mode:
        return
    if mode in (DEEPSPEED, FSDP) and acc.num_processes == 1 and acc.distributed_type == DistributedType.NO:
        reason = "there is no process group; start the script with `accelerate launch --config_file ...`"
    elif mode in (DEEPSPEED, FSDP):
        reason = f"accelerate did not enable its {'DeepSpeed' if mode == DEEPSPEED else 'FSDP'} plugin"
    else:
        reason = "the process group is not the one the launcher set up"
    raise DistributedModeError(
        f"the launch asked for {mode} but the Accelerator runs as {got} ({acc.distributed_type}, "
        f"{acc.num_processes} process(es), device {acc.device}): {reason}; refusing to train in another mode"
    )


def shards_weights(acc: Accelerator) -> bool:
    """Whether each process holds only a shard of the weights (ZeRO-3, FSDP): saving then needs
    `acc.get_state_dict(model)` on every process (it gathers them)."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return acc.state.deepspeed_plugin.zero_stage == 3
    return acc.distributed_type == DistributedType.FSDP


def describe_mode(acc: Accelerator) -> dict[str, Any]:
    """What the manifest records: the mode actually used and its sharding settings."""
    info: dict[str, Any] = {
        "mode": actual_mode(acc),
        "num_processes": acc.num_processes,
        "device": acc.device.type,
        "backend": acc.state.backend,
        "mixed_precision": acc.mixed_precision,
    }
    if info["mode"] == DEEPSPEED:
        zero = acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        info.update(
            zero_stage=zero.get("stage"),
            offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none"),
            offload_param=zero.get("offload_param", {}).get("device", "none"),
        )
    elif info["mode"] == FSDP:
        plugin = acc.state.fsdp_plugin
        info.update(
            fsdp_version=plugin.fsdp_version,
            state_dict_type=str(plugin.state_dict_type).rsplit(".", 1)[-1],
            reshard_after_forward=bool(plugin.reshard_after_forward),
            # FSDP2 takes a CPUOffloadPolicy, FSDP1 a CPUOffload(offload_params=...)
            offload_params=isinstance(plugin.cpu_offload, CPUOffloadPolicy)
            or bool(getattr(plugin.cpu_offload, "offload_params", False)),
        )
    return info
