"""Accelerate-based training loop for reward models on preference pairs.

One loop for one CPU, one GPU or many processes (DDP; DeepSpeed / FSDP through `accelerate launch`
configs). Per optimizer step: `grad_accum_steps` micro-batches of pairs, the head's pair loss,
gradient clipping, AdamW, a transformers LR schedule. It logs loss, per-dimension accuracy, learning
rate and gradient norm to TensorBoard and `train_log.jsonl`, validates per dimension, and saves
`checkpoints/step_N` (model, optimizer, scheduler, RNG of every process, step = data position)
every `save_steps`. A non-finite loss or gradient norm on any process stops every process before
the weights change, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, send_to_device
from torch.distributed.fsdp import register_fsdp_forward_method
from torch.utils.data import DataLoader
from transformers import get_scheduler

from mmreward.backbones.vlm import vision_tower
from mmreward.collate import PairCollator
from mmreward.data.dataset import PreferenceDataset
from mmreward.errors import MmrewardError, UsageError
from mmreward.metrics import pair_accuracy
from mmreward.model import RewardModel
from mmreward.training.config import RewardTrainingConfig
from mmreward.training.distributed import DistributedModeError, settle_deepspeed_config
from mmreward.training.distributed import make_accelerator as make_mode_accelerator
from mmreward.training.progress import Progress
from mmreward.training.schedule import Phase, ScheduledBatchSampler, ScheduleError, StepSchedule

CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss or gradient norm was NaN or infinite."""


@dataclass
class TrainerState:
    """What besides model/optimizer/scheduler/RNG a checkpoint must restore: the step (= data position)."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def checkpoint_step(path: Path) -> int | None:
    """The step of a finished checkpoint directory `step_N`, None for anything else."""
    name = path.name
    if not path.is_dir() or not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def save_checkpoint_atomically(acc: Accelerator, output_dir: Path, step: int, save_total_limit: int) -> Path:
    """`acc.save_state` into `output_dir/checkpoints/step_N` via a temporary dir renamed once every process
    is done (a kill mid-save never leaves a half-written `step_N`); keeps the newest `save_total_limit`."""
    root = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = root / f"step_{step:08d}", root / f"tmp_step_{step:08d}"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        finished = sorted(p for p in root.iterdir() if checkpoint_step(p) is not None)
        for old in finished[: -save_total_limit]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


class CheckpointError(MmrewardError, RuntimeError):
    """A training checkpoint that cannot be loaded safely (the message names the file)."""


# Classes besides tensors and plain containers in DeepSpeed's engine files (ZeRO optimizer states).
DEEPSPEED_CHECKPOINT_CLASSES = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


def load_checkpoint(acc: Accelerator, path: Path) -> None:
    """`acc.load_state(path)` after checking that its pickles hold plain data only.

    accelerate loads the objects registered with `register_for_checkpointing` (scheduler, trainer
    state) with `torch.load(weights_only=False)`, which runs whatever code a planted pickle names.
    Each of those files is first read with `weights_only=True` (accelerate's safe loader): it refuses
    any global outside tensors and plain containers, so a file that passes holds no code. DeepSpeed
    reads its engine files (`pytorch_model/*.pt`) the same way; their pickles may name nothing beyond
    what `weights_only` allows and DeepSpeed's own `DEEPSPEED_CHECKPOINT_CLASSES` (checked without
    reading the tensor data, which for a large model is many gigabytes).
    """
    from accelerate.utils import load as weights_only_load

    for file in sorted(Path(path).glob("custom_checkpoint_*.pkl")):
        try:
            weights_only_load(file, map_location="cpu")
        except Exception as err:  # UnpicklingError for foreign globals, EOFError/RuntimeError for truncation
            raise CheckpointError(
                f"{file}: refused to load (not plain checkpoint data: {type(err).__name__}: {err})"
            ) from err
    for file in sorted(Path(path).glob("*/*.pt")):
        try:
            foreign = set(torch.serialization.get_unsafe_globals_in_checkpoint(file)) - DEEPSPEED_CHECKPOINT_CLASSES
        except Exception as err:  # not a torch zip file, truncated
            raise CheckpointError(f"{file}: refused to load (unreadable: {type(err).__name__}: {err})") from err
        if foreign:
            raise CheckpointError(f"{file}: refused to load (names code outside plain checkpoint data: {sorted(foreign)})")
    acc.load_state(str(path))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest finished checkpoint under `output_dir/checkpoints` (temporary dirs are ignored)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    found = [(s, p) for p in root.glob("step_*") if (s := checkpoint_step(p)) is not None] if root.is_dir() else []
    return max(found)[1] if found else None


def append_log(acc: Accelerator, log_dir: Path, step: int, values: dict[str, float]) -> None:
    """Send `values` to the trackers (TensorBoard) and, on the main process, append them as one line of
    `log_dir/train_log.jsonl`."""
    acc.log(values, step=step)
    if acc.is_main_process:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


def drop_logs_after(acc: Accelerator, log_dir: Path, step: int) -> None:
    """Remove JSONL log lines of steps after `step`: a killed run may have logged steps after its last
    checkpoint, and the resumed run logs them again (a line cut by the kill goes too)."""
    path = log_dir / LOG_NAME
    if not (acc.is_main_process and path.exists()):
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def resume_from_latest(acc: Accelerator, output_dir: Path, log_dir: Path, state: TrainerState) -> Path | None:
    """Load the newest finished checkpoint under `output_dir` (None when there is none), restoring the
    registered `state`, and drop the log lines the killed run wrote after it."""
    path = latest_checkpoint(output_dir)
    if path is not None:
        load_checkpoint(acc, path)
        drop_logs_after(acc, log_dir, state.step)
        acc.print(f"resumed from {path} at step {state.step}")
    return path


def curriculum_pool(data: PreferenceDataset, dims: list[str]) -> tuple[int, ...]:
    """Indices of records whose `meta["varies"]` is non-empty and within `dims`."""
    allowed, picked = set(dims), []
    for i, record in enumerate(data.records):
        if "varies" not in record.meta:
            raise ScheduleError(
                f"{data.records.path}: record {record.id!r} has no meta['varies']; the curriculum needs it"
            )
        varies = set(record.meta["varies"])
        if varies and varies <= allowed:
            picked.append(i)
    if not picked:
        raise ScheduleError(f"{data.records.path}: no record varies only in {sorted(allowed)} (curriculum pool empty)")
    return tuple(picked)


def training_phases(data: PreferenceDataset, cfg: RewardTrainingConfig) -> list[Phase]:
    """The curriculum's warm-up phases (`curriculum_varies` in order, `curriculum_steps` split evenly among them,
    the first ones taking the remainder), then every record; phases past `max_steps` are left out."""
    phases, steps = [], 0
    if cfg.curriculum_steps:
        share, rest = divmod(cfg.curriculum_steps, len(cfg.curriculum_varies))
        for number, dims in enumerate(cfg.curriculum_varies):
            if steps < cfg.max_steps:
                pool = curriculum_pool(data, dims.split("+"))
                phases.append(Phase(f"curriculum:{dims}", steps * cfg.grad_accum_steps, pool))
            steps += share + (number < rest)
    if steps < cfg.max_steps:
        phases.append(Phase("all", steps * cfg.grad_accum_steps, tuple(range(len(data)))))
    return phases


def use_fused_adamw(acc: Accelerator) -> bool:
    """Whether AdamW should run as one fused kernel per step: on CUDA, unless FSDP / DeepSpeed shard it.

    The default (foreach) AdamW makes several passes over every parameter-sized tensor per step;
    the fused kernel reads parameters, gradients and both moments once. With full fine-tuning of
    a model of billions of parameters at a few pairs per step, those passes are a large share of
    the step. Sharded setups keep the default (their parameter types are not all fused-capable).
    """
    return acc.device.type == "cuda" and acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU)


def make_accelerator(cfg: RewardTrainingConfig, log_dir: str | Path) -> Accelerator:
    """The Accelerator a run needs: the launch's distributed mode (or an error), CPU when asked or without a GPU,
    TensorBoard logs, accumulation."""
    return make_mode_accelerator(
        cfg.use_cpu,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with="tensorboard",
        project_dir=str(log_dir),
    )


class RewardTrainer:
    """Trains `model` on `train_data` pairs; `train()` returns the final metrics.

    log_dir: TensorBoard and JSONL logs (default: `output_dir/logs`). Checkpoints go to
    `output_dir/checkpoints`. The caller saves the final model (`unwrapped_model().save_pretrained`)
    and then calls `accelerator.end_training()` (it closes the trackers and the process group).
    """

    def __init__(
        self,
        model: RewardModel,
        train_data: PreferenceDataset,
        collator: PairCollator,
        cfg: RewardTrainingConfig,
        val_data: PreferenceDataset | None = None,
        accelerator: Accelerator | None = None,
        log_dir: str | Path | None = None,
    ):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.output_dir / "logs"
        self.accelerator = accelerator or make_accelerator(cfg, self.log_dir)
        if self.accelerator.gradient_accumulation_steps != cfg.grad_accum_steps:
            raise ValueError(
                f"Accelerator(gradient_accumulation_steps={self.accelerator.gradient_accumulation_steps}) "
                f"differs from grad_accum_steps={cfg.grad_accum_steps}; build it with make_accelerator(cfg)"
            )
        self.train_data, self.val_data, self.collator = train_data, val_data, collator
        self.state = TrainerState()
        self.loss_cfg = cfg.loss()
        self.dimensions = list(model.dimensions)
        self.model = model
        if self.accelerator.distributed_type == DistributedType.FSDP and model.token_row_embedding() is not None:
            raise DistributedModeError(
                "the head's tokens train in an otherwise frozen embedding matrix through a gradient hook on it, "
                "and FSDP2 replaces that parameter by its shards (the hook would be lost and every row would "
                "train); run this under DDP or DeepSpeed"
            )
        self.optimizer = self._optimizer(model)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # No DataLoader goes through prepare (the loader is built per resume position), so DeepSpeed is told
            # the micro-batch; it accumulates and clips by its config, so that gets the stage's settings too.
            settle_deepspeed_config(self.accelerator, train_micro_batch_size_per_gpu=cfg.batch_size,
                                    gradient_accumulation_steps=cfg.grad_accum_steps,
                                    gradient_clipping=cfg.max_grad_norm)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            # Evaluation and the reward statistics call `score`, not the module: FSDP2 gathers the root's shards
            # only around registered forward methods.
            register_fsdp_forward_method(self.unwrapped_model(), "score")
        # Built on the prepared optimizer: with CPU optimizer offload DeepSpeed steps its own CPU Adam, not the
        # AdamW above. Stepped by hand once per optimizer step (not prepared: accelerate would step it once per
        # process), and checkpointed with the trainer state.
        self.scheduler = self._lr_scheduler()
        self.accelerator.register_for_checkpointing(self.scheduler, self.state)
        self.schedule = self._schedule()

    # ------------------------------------------------------------------------------ setup

    def _optimizer(self, model: RewardModel) -> torch.optim.Optimizer:
        """AdamW with parameter groups head, vision tower, the rest (each its own learning rate), and the
        embedding matrix when only the head's token rows train in it (head rate, no weight decay: the
        decay would shrink the frozen rows too)."""
        cfg = self.cfg
        token_rows = model.token_row_embedding()
        head = [p for p in model.head.parameters() if p.requires_grad]
        tokens = [token_rows] if token_rows is not None else []
        vision = [p for p in vision_tower(model.backbone).parameters() if p.requires_grad]
        taken = {id(p) for p in head + tokens + vision}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        head_lr = cfg.head_learning_rate or cfg.learning_rate
        groups = [
            {"params": params, "lr": lr, **extra}
            for params, lr, extra in (
                (head, head_lr, {}),
                (tokens, head_lr, {"weight_decay": 0.0}),
                (vision, cfg.vision_learning_rate or cfg.learning_rate, {}),
                (rest, cfg.learning_rate, {}),
            )
            if params
        ]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 fused=use_fused_adamw(self.accelerator))

    def _lr_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        cfg, options = self.cfg, self.cfg.scheduler_options()
        try:
            return get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.max_steps, scheduler_specific_kwargs=options)
        except (TypeError, ValueError) as err:  # an unknown name, or options the scheduler does not take
            raise UsageError(f"lr_scheduler {cfg.lr_scheduler!r} with lr_scheduler_kwargs {options}: {err}") from None

    def _schedule(self) -> StepSchedule:
        cfg = self.cfg
        return StepSchedule(training_phases(self.train_data, cfg), cfg.batch_size, self.accelerator.num_processes, cfg.seed)

    def unwrapped_model(self) -> RewardModel:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step_N` atomically (see `save_checkpoint_atomically`)."""
        return save_checkpoint_atomically(self.accelerator, self.output_dir, self.state.step, self.cfg.save_total_limit)

    def maybe_resume(self) -> Path | None:
        """Load the newest checkpoint in `output_dir` (if `cfg.resume` and one exists)."""
        return resume_from_latest(self.accelerator, self.output_dir, self.log_dir, self.state) if self.cfg.resume else None

    # ------------------------------------------------------------------------------ steps

    def _guard_finite(self, value: torch.Tensor, what: str) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.reduce(bad, reduction="sum").item() > 0:  # every process stops together
            last = latest_checkpoint(self.output_dir)
            raise NonFiniteLossError(
                f"non-finite {what} at step {self.state.step + 1} "
                f"(value on process {self.accelerator.process_index}: {value.detach().float().cpu().tolist()}); "
                f"training stopped before updating the weights. Last good checkpoint: "
                f"{last if last is not None else 'none (no checkpoint saved yet)'}"
            )

    def _clip_grad_norm(self) -> torch.Tensor:
        """Clip the synchronised gradients to `max_grad_norm`; returns their norm before clipping.

        Under DeepSpeed the step has already run inside `backward`, clipped by `gradient_clipping` (set to
        `max_grad_norm` before `prepare`); accelerate then returns that step's norm as a float, and DeepSpeed has
        skipped the update when the norm was not finite (its overflow check), so the guard still stops the run on
        the last good weights. FSDP2 returns a DTensor norm, DDP a tensor.
        """
        acc, cfg = self.accelerator, self.cfg
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        if norm is None:
            raise RuntimeError(f"{acc.distributed_type} reported no gradient norm; the non-finite guard needs one")
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return torch.as_tensor(norm, dtype=torch.float32)

    def _loader(self, start_micro: int) -> DataLoader:
        stop = self.cfg.max_steps * self.cfg.grad_accum_steps
        sampler = ScheduledBatchSampler(self.schedule, start_micro, stop, self.accelerator.process_index)
        return DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.cfg.num_workers)

    def _train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (mean loss, correct [k], decisive count [k], grad norm).

        Accumulation goes through `accelerator.accumulate`, so DDP skips gradient syncs and DeepSpeed
        / FSDP see their own accumulation boundaries; the optimizer steps on the last micro-batch.
        """
        acc, cfg = self.accelerator, self.cfg
        loss_sum = torch.zeros((), device=acc.device)
        correct = torch.zeros(len(self.dimensions), device=acc.device)
        count = torch.zeros(len(self.dimensions), device=acc.device)
        unwrapped = self.unwrapped_model()
        grad_norm = torch.zeros(())
        for _ in range(cfg.grad_accum_steps):
            batch = send_to_device(next(batches), acc.device)
            with acc.accumulate(self.model):
                rewards = self.model(batch["inputs"])
                loss, stats = unwrapped.pair_loss(rewards, batch["labels"], batch["label_mask"], self.loss_cfg)
                self._guard_finite(loss, "loss")
                acc.backward(loss)  # DeepSpeed reduces, clips and steps in here at the accumulation boundary
                if acc.sync_gradients:
                    grad_norm = self._clip_grad_norm()
                    self._guard_finite(grad_norm, "gradient norm")
                self.optimizer.step()  # a no-op under DeepSpeed
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            correct += torch.nan_to_num(stats["accuracy"] * stats["count"]).to(acc.device)
            count += stats["count"].to(acc.device)
        if not acc.sync_gradients:
            raise RuntimeError(
                f"the Accelerator accumulates over {acc.gradient_accumulation_steps} micro-batches but "
                f"grad_accum_steps is {cfg.grad_accum_steps}; create it with gradient_accumulation_steps="
                f"{cfg.grad_accum_steps}"
            )
        self.scheduler.step()
        self.state.step += 1
        return loss_sum / cfg.grad_accum_steps, correct, count, grad_norm

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def side_rewards(self, data: PreferenceDataset) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Every pair's rewards: record index -> (rewards a [k], rewards b [k], labels [k], label mask [k]).

        Each process scores an equal share (wrapping around, so every process runs the same number of
        forwards); the results are gathered on every process.
        """
        acc = self.accelerator
        model = self.unwrapped_model()
        was_training = model.training
        model.eval()
        per_process = math.ceil(len(data) / acc.num_processes)
        mine = [(acc.process_index * per_process + i) % len(data) for i in range(per_process)]
        rows = []
        for start in range(0, per_process, self.cfg.eval_batch_size):
            chunk = mine[start : start + self.cfg.eval_batch_size]
            batch = send_to_device(self.collator([data[i] for i in chunk]), acc.device)
            rewards = model.score(batch["inputs"]).float().cpu().numpy()
            labels, masks = batch["labels"].cpu().numpy(), batch["label_mask"].cpu().numpy()
            for j, index in enumerate(chunk):
                rows.append((index, rewards[j], rewards[len(chunk) + j], labels[j], masks[j]))
        model.train(was_training)
        return {index: (a, b, y, m) for index, a, b, y, m in gather_object(rows)}  # dedupes the wrap-around

    @torch.no_grad()
    def evaluate(self, data: PreferenceDataset | None = None) -> dict[str, float]:
        """Per-dimension pair accuracy (without ties, and tie-calibrated with ties) on `data`."""
        data = data if data is not None else self.val_data
        if data is None or len(data) == 0:
            return {}
        gathered = self.side_rewards(data)
        order = sorted(gathered)
        deltas = np.stack([gathered[i][0] - gathered[i][1] for i in order])
        labels = np.stack([gathered[i][2] for i in order])
        masks = np.stack([gathered[i][3] for i in order]).astype(bool)
        metrics = {"val/pairs": float(len(gathered))}
        for j, dim in enumerate(self.dimensions):
            keep = masks[:, j]
            if (labels[keep, j] != 0).any():
                metrics[f"val/accuracy/{dim}"] = pair_accuracy(deltas[keep, j], labels[keep, j])
            if keep.any():
                metrics[f"val/accuracy_ties/{dim}"] = pair_accuracy(deltas[keep, j], labels[keep, j], with_ties=True)
        return metrics

    def reward_statistics(self, data: PreferenceDataset) -> dict[str, dict[str, float]]:
        """Per-dimension mean and (population) std of the model's rewards over the distinct items
        (prompt, media, response) of `data`'s pairs: the normalisation statistics of a checkpoint."""
        gathered = self.side_rewards(data)
        distinct: dict[tuple, np.ndarray] = {}
        for index in sorted(gathered):
            record = data.records[index]
            for side, rewards in ((record.a, gathered[index][0]), (record.b, gathered[index][1])):
                distinct.setdefault((record.prompt, tuple(map(str, side.media_paths())), side.response), rewards)
        values = np.stack(list(distinct.values())).astype(np.float64)
        return {dim: {"mean": float(values[:, j].mean()), "std": float(values[:, j].std())}
                for j, dim in enumerate(self.dimensions)}

    # ------------------------------------------------------------------------------ loop

    def _log(self, values: dict[str, float]) -> None:
        append_log(self.accelerator, self.log_dir, self.state.step, values)

    def _replica_digests(self) -> list[str] | None:
        """sha256 of every process's parameters (DDP only; sharded engines hold different shards)."""
        acc = self.accelerator
        if acc.num_processes == 1 or acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return None
        digest = hashlib.sha256()
        for name, param in sorted(self.unwrapped_model().state_dict().items()):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
        return gather_object([digest.hexdigest()])

    def train(self) -> dict[str, Any]:
        """Run (or resume) training to `max_steps`; returns the final metrics."""
        acc, cfg = self.accelerator, self.cfg
        acc.init_trackers("reward")
        resumed = self.maybe_resume()
        if cfg.eval_at_start and self.state.step == 0:
            self._log(self.evaluate())  # the untrained baseline, logged at step 0
        batches = iter(self._loader(self.state.step * cfg.grad_accum_steps))
        window = {"loss": 0.0, "steps": 0, "correct": 0.0, "count": 0.0}
        started, start_step = time.perf_counter(), self.state.step
        last_loss = math.nan
        progress = Progress(cfg.max_steps, initial=self.state.step, enabled=acc.is_main_process)
        while self.state.step < cfg.max_steps:
            self.model.train()
            phase = self.schedule.phase_name(self.state.step * cfg.grad_accum_steps)
            loss, correct, count, grad_norm = self._train_step(batches)
            window["loss"] += loss
            window["correct"] += correct
            window["count"] += count
            window["steps"] += 1
            step = self.state.step
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                last_loss = acc.reduce(window["loss"], reduction="mean").item() / window["steps"]
                correct_all = acc.reduce(window["correct"], reduction="sum")
                count_all = acc.reduce(window["count"], reduction="sum")
                values = {
                    "train/loss": last_loss,
                    "train/lr": self.scheduler.get_last_lr()[-1],  # the backbone's (last group)
                    "train/curriculum": float(phase != "all"),
                    "train/steps_per_s": (step - start_step) / max(time.perf_counter() - started, 1e-9),
                }
                values["train/grad_norm"] = grad_norm.item()
                for j, dim in enumerate(self.dimensions):
                    if count_all[j] > 0:
                        values[f"train/accuracy/{dim}"] = (correct_all[j] / count_all[j]).item()
                self._log(values)
                window = {"loss": 0.0, "steps": 0, "correct": 0.0, "count": 0.0}
            logged = step % cfg.logging_steps == 0 or step == cfg.max_steps
            progress.update(step, None if math.isnan(last_loss) else last_loss, logged=logged)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps:
                self._log(self.evaluate())
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self.save_checkpoint()
        progress.close()
        elapsed = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "steps": self.state.step,
            "resumed_from": str(resumed) if resumed is not None else None,
            "train/loss": last_loss,
            "train_seconds": elapsed,
            "steps_per_second": (self.state.step - start_step) / max(elapsed, 1e-9),
            "num_processes": acc.num_processes,
        }
        final_eval = self.evaluate()
        if final_eval:
            self._log(final_eval)
        metrics.update(final_eval)
        if cfg.check_replicas and (digests := self._replica_digests()) is not None:
            if len(set(digests)) != 1:
                raise RuntimeError(f"processes ended with different weights (sha256 per process: {digests})")
            metrics["replica_weight_sha256"] = digests
        return metrics
