"""The VR-Thinker GRPO loop on accelerate: multi-turn tool rollouts, rule rewards, per-turn rows, clipped updates.

One step (per process):

1. Take ``pairs_per_step`` judging pairs (a pure function of the step, so a resumed run sees the same data) and
   roll out ``group_size`` episodes of each with :class:`~vr_thinker.rollout.HFRolloutEngine` (sampling; episode g
   of the pair at data position n has the seed ``episode_seed(seed, "train", n, g)``, whatever process or rollout
   batch it lands in).
2. Score every group with the preset's rewards (:func:`vr_thinker.rewards.group_rewards`) and turn the totals into
   group-normalised advantages, shared by all turns of a trace (:func:`vr_thinker.grpo.group_advantages`).
3. Build one row per assistant turn with the exact windowed context it saw (:func:`vr_thinker.grpo.rollout_rows`),
   weights that normalise the loss per trace, reference log-probs (adapters disabled for LoRA, else a frozen copy
   of the starting model; skipped when ``kl_coef == 0``) and, when a rollout serves several updates, the old
   log-probs.
4. ``updates_per_rollout`` optimizer steps over the rows in micro-batches (gradients synchronised across DDP
   processes only on the last micro-batch), clipped gradient norm, AdamW, a transformers LR schedule.

Settings the config leaves unset (None) come from the preset's ``grpo`` section: for ``vr-thinker`` the official
ones (KL 0.01 in the reward, clip 0.2 / 0.35, token losses summed and divided by 200, temperature 1.0 on the first
turn and 0.9 later, top_p 0.95, top_k 40, lr 1e-6).

Logged every ``logging_steps`` (TensorBoard under ``log_dir`` and ``train_log.jsonl``): reward and its terms
(accuracy, format, curiosity, calls, CoT gain, exploration), verdict accuracy per dimension, tool calls, response length, turns, episode
statuses, KL, clip fractions, entropy, loss, gradient norm, learning rate, timings. With ``eval_pairs`` the policy is
also run on a fixed set every ``eval_steps`` (greedy or with fixed per-pair sampling seeds) and its mean reward logged.

Checkpoints ``checkpoints/step_N`` (model, optimizer, scheduler, loop state, RNG of every process) are written
atomically every ``save_steps``; a restarted loop resumes from the newest one, and log lines written after it by a
killed run are dropped. Supported launches: one process (CPU or GPU) and DDP; a DeepSpeed or FSDP launch is refused
(`require_data_parallel`): rollouts generate with the HF model on every process, which under ZeRO-3 / FSDP holds only
a shard of the weights (generation would gather them layer by layer on every token), the frozen reference model is a
full copy per process (sharding the policy alone would not fit a model that needs sharding), and under DeepSpeed the
optimizer steps inside backward, after this loop's micro-batch accumulation and gradient guard would have run. For
models that need sharding, ``train/vrt_grpo_trl.py`` runs TRL's GRPOTrainer, which handles those engines itself.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import PeftModel
from transformers import get_scheduler

from mmreward.backbones.vlm import unwrap_peft
from mmreward.data.media import VideoClip
from mmreward.data.records import PreferenceRecord
from mmreward.training.distributed import (
    DEEPSPEED,
    FSDP,
    DistributedModeError,
    actual_mode,
    requested_mode,
)
from mmreward.training.progress import Progress
from mmreward.training.trainer import (
    TrainerState,
    append_log,
    resume_from_latest,
    save_checkpoint_atomically,
    use_fused_adamw,
)
from vr_thinker.env import VideoPairEnv
from vr_thinker.grpo import (
    PolicyRow,
    PolicyRowCollator,
    group_advantages,
    grpo_token_loss,
    k3_kl,
    kl_in_advantages,
    rollout_rows,
    token_logprobs,
    token_weights,
)
from vr_thinker.grpo_config import GRPOConfig
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.protocol import label_verdicts
from vr_thinker.rewards import RewardTerms, group_rewards
from vr_thinker.rollout import (
    HFRolloutEngine,
    RolloutTrace,
    SamplingConfig,
    episode_seed,
)

Video = str | Path | VideoClip


def require_data_parallel(accelerator: Accelerator) -> None:
    """Raise `DistributedModeError` unless the launch asked for and got one process or DDP (see the module doc)."""
    wanted, got = requested_mode(), actual_mode(accelerator)
    if wanted in (DEEPSPEED, FSDP) or got in (DEEPSPEED, FSDP):
        raise DistributedModeError(
            f"the VR-Thinker GRPO loop runs on one process or DDP, not {wanted if wanted in (DEEPSPEED, FSDP) else got}: "
            "its rollouts generate with the full model on every process and it keeps a full reference copy; "
            "launch it with train/accelerate/ddp.yaml, or use train/vrt_grpo_trl.py for sharded training"
        )


@dataclass(frozen=True)
class JudgePair:
    """One labelled pair to judge: ``label`` holds verdicts by answer key (1 = Video 1 better, 2, 0 = tie) for every
    judged dimension and the overall key."""

    id: str
    prompt: str
    video_1: Video
    video_2: Video
    label: dict[str, int]


def pairs_from_records(records: Sequence[PreferenceRecord], preset: ProtocolPreset,
                       dimensions: Sequence[DimensionSpec]) -> list[JudgePair]:
    """Video records (side a = Video 1) as judging pairs over ``dimensions`` + overall; raises naming the record
    when a side has no video or the label lacks a judged dimension."""
    pairs = []
    wanted = [d.label for d in dimensions] + ["overall"]
    for record in records:
        if record.a.video is None or record.b.video is None:
            raise ValueError(f"record {record.id!r}: GRPO needs a video on both sides")
        missing = [k for k in wanted if k not in record.label]
        if missing:
            raise ValueError(f"record {record.id!r}: label has no {missing} (judged: {wanted})")
        label = label_verdicts(record.label, preset, dimensions)
        pairs.append(JudgePair(record.id, record.prompt, record.a.video, record.b.video, label))
    return pairs


def trace_summary(traces: Sequence[RolloutTrace], pairs: Sequence[JudgePair], rewards: Sequence[RewardTerms],
                  keys: Sequence[str]) -> dict[str, float]:
    """Means over traces: reward and its terms, verdict accuracy per answer key, tool calls, response length,
    turns, and the share of each episode status."""
    n = len(traces)
    out = {
        "reward/mean": sum(r.total for r in rewards) / n,
        "reward/std": float(np.std([r.total for r in rewards])),
        **{f"reward/{term}": sum(getattr(r, term) for r in rewards) / n
           for term in ("accuracy", "format", "curiosity", "calls", "cot_gain", "exploration")},
        "tool_calls/mean": sum(t.outcome.num_tool_calls for t in traces) / n,
        "tool_calls/any": sum(t.outcome.num_tool_calls > 0 for t in traces) / n,
        "response_length/mean": sum(t.num_generated_tokens for t in traces) / n,
        "turns/mean": sum(len(t.turns) for t in traces) / n,
    }
    for key in keys:
        out[f"accuracy/{key}"] = sum(t.outcome.verdicts.get(key) == p.label[key] for t, p in zip(traces, pairs)) / n
    for status, count in Counter(t.status for t in traces).items():
        out[f"status/{status}"] = count / n
    return out


class GRPOLoop:
    """Trains ``model`` (HF Qwen-VL or a ``peft.PeftModel``; trainable parameters already chosen) with GRPO on
    ``pairs``; ``train()`` runs or resumes to ``config.max_steps`` and returns the final metrics.

    preset / dimensions: the protocol (must be the one the model was trained with); its GRPO defaults fill the
    config's unset settings. eval_pairs: a fixed set judged at the start, every ``eval_steps`` and at the end.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        pairs: Sequence[JudgePair],
        preset: ProtocolPreset,
        dimensions: Sequence[DimensionSpec],
        config: GRPOConfig,
        eval_pairs: Sequence[JudgePair] = (),
        accelerator: Accelerator | None = None,
        log_dir: str | Path | None = None,
    ):
        if not pairs:
            raise ValueError("no training pairs")
        config = config.resolved(preset)
        self.cfg, self.loss_cfg = config, config.loss()
        self.output_dir = Path(config.output_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.output_dir / "logs"
        self.accelerator = accelerator or Accelerator(
            cpu=config.use_cpu or not torch.cuda.is_available(), log_with="tensorboard", project_dir=str(self.log_dir)
        )
        require_data_parallel(self.accelerator)
        self.pairs, self.eval_pairs = list(pairs), list(eval_pairs)
        self.preset, self.dimensions = preset, tuple(dimensions)
        self.keys = [*(d.key for d in self.dimensions), preset.answer.overall_key]
        self.processor = processor
        self.collator = PolicyRowCollator(processor)
        self.state = TrainerState()  # the step, which is also the data position
        # The reference is the starting policy: copied before any checkpoint is loaded into the model.
        self.ref_model = None
        if config.kl_coef > 0 and not isinstance(model, PeftModel):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           fused=use_fused_adamw(self.accelerator))
        self.scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.warmup_steps,
                                       num_training_steps=config.max_steps * config.updates_per_rollout)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)
        # Stepped by hand once per optimizer step (a prepared scheduler would step once per process).
        self.accelerator.register_for_checkpointing(self.scheduler, self.state)

    # ------------------------------------------------------------------------------------------------ helpers

    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def _generator_model(self) -> Any:
        """The model the rollout engine drives: the HF model itself (for LoRA: with the adapters active)."""
        return unwrap_peft(self.unwrapped())

    @contextmanager
    def _reference(self):
        """The reference model: the frozen copy, or the policy with its LoRA adapters switched off."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        model = self.unwrapped()
        with model.disable_adapter():
            yield model

    def step_positions(self, step: int) -> range:
        """Data positions of ``step`` on this process: each process takes its own consecutive ``pairs_per_step``."""
        acc, k = self.accelerator, self.cfg.pairs_per_step
        start = (step * acc.num_processes + acc.process_index) * k
        return range(start, start + k)

    def step_pairs(self, step: int) -> list[JudgePair]:
        """The pairs of ``step`` on this process: consecutive slices of per-epoch permutations."""
        n = len(self.pairs)
        picked = []
        for position in self.step_positions(step):
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            picked.append(self.pairs[int(order[offset])])
        return picked

    def _envs(self, pairs: Sequence[JudgePair], copies: int, seeds: Sequence[int]) -> list[VideoPairEnv]:
        """Episodes of each pair; episode i's seed also draws its tool's over-limit reductions."""
        return [VideoPairEnv(p.prompt, p.video_1, p.video_2, self.preset, self.dimensions, seed=seed)
                for p, seed in zip([p for p in pairs for _ in range(copies)], seeds)]

    def rollout(self, envs: list[VideoPairEnv], sampling: SamplingConfig, seeds: Sequence[int]) -> list[RolloutTrace]:
        """Episodes generated by the current policy (eval mode, no gradients), in batches of
        ``rollout_batch_size``; episode i samples with ``seeds[i]``, so batching does not change it."""
        model = self._generator_model()
        was_training = model.training
        model.eval()
        engine = HFRolloutEngine(model, self.processor)
        size = self.cfg.rollout_batch_size or len(envs)
        traces: list[RolloutTrace] = []
        for start in range(0, len(envs), size):
            traces += engine.rollout(envs[start : start + size], sampling, seeds=seeds[start : start + size])
        model.train(was_training)
        return traces

    def _micro_batches(self, rows: list[PolicyRow]) -> list[list[int]]:
        """Row indices per forward: longest first, so rows of similar length share padding."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
        size = self.cfg.micro_batch_rows
        return [order[i : i + size] for i in range(0, len(order), size)]

    # ---------------------------------------------------------------------------------------------------- step

    def train_step(self) -> dict[str, float]:
        """Roll out, score and update once; returns this step's metrics (this process only)."""
        acc, cfg = self.accelerator, self.cfg
        started = time.perf_counter()
        pairs = self.step_pairs(self.state.step)
        seeds = [episode_seed(cfg.seed, "train", position, g)
                 for position in self.step_positions(self.state.step) for g in range(cfg.group_size)]
        envs = self._envs(pairs, cfg.group_size, seeds)
        traces = self.rollout(envs, cfg.sampling(), seeds)
        rollout_s = time.perf_counter() - started

        rewards: list[RewardTerms] = []
        for g, pair in enumerate(pairs):
            group = traces[g * cfg.group_size : (g + 1) * cfg.group_size]
            rewards += group_rewards(group, pair.label, self.preset, step=self.state.step,
                                     variant=cfg.reward_variant)
        group_ids = [i // cfg.group_size for i in range(len(traces))]
        advantages = group_advantages([r.total for r in rewards], group_ids, cfg.advantage_scale, cfg.advantage_eps,
                                      cfg.advantage_population_std)
        rows = rollout_rows(traces, cfg.merge_rows)
        micro = self._micro_batches(rows)
        row_weights = torch.tensor(token_weights(rows, cfg.loss_aggregation, cfg.loss_constant, len(micro)))
        row_advantages = advantages[[row.trace for row in rows]]
        batches = [self.collator([rows[i] for i in chunk]) for chunk in micro]

        device = acc.device
        ref_logps: list[torch.Tensor | None] = [None] * len(micro)
        old_logps: list[torch.Tensor | None] = [None] * len(micro)
        with torch.no_grad():
            if self.loss_cfg.kl_coef > 0:
                with self._reference() as reference:
                    reference.eval()
                    ref_logps = [token_logprobs(reference, b, cfg.logprob_temperature)[0] for b in batches]
            if cfg.updates_per_rollout > 1:  # with one update the old policy is the current one (ratio 1)
                self.unwrapped().eval()
                old_logps = [token_logprobs(self.model, b, cfg.logprob_temperature)[0] for b in batches]

        self.model.train()
        totals = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "low": 0.0, "high": 0.0, "tokens": 0.0}
        grad_norm = None
        entropy_mode = self.loss_cfg.entropy_coef > 0
        for _ in range(cfg.updates_per_rollout):
            for index, (chunk, batch) in enumerate(zip(micro, batches)):
                last = index == len(micro) - 1
                with acc.no_sync(self.model) if not last else nullcontext():
                    logp, entropy = token_logprobs(self.model, batch, cfg.logprob_temperature, with_entropy=True,
                                                   entropy_grad=entropy_mode)
                    token_rows = batch["token_rows"].to(device)
                    weights = row_weights[chunk].to(device)[token_rows]
                    old = old_logps[index].to(device) if old_logps[index] is not None else logp.detach()
                    ref = ref_logps[index].to(device) if ref_logps[index] is not None else None
                    token_advantages = row_advantages[chunk].to(device)[token_rows]
                    if ref is not None and self.loss_cfg.kl_in == "reward":
                        # The KL of the rollout policy to the reference is a reward, summed to each turn's end.
                        token_advantages = kl_in_advantages(token_advantages, k3_kl(old, ref),
                                                            batch["loss_mask"], self.loss_cfg.kl_coef)
                    terms = grpo_token_loss(logp, old, token_advantages, self.loss_cfg, ref_logp=ref, entropy=entropy)
                    loss = (terms.loss * weights).sum()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite GRPO loss at step {self.state.step + 1}")
                    acc.backward(loss)
                totals["loss"] += loss.item()
                totals["tokens"] += logp.numel()
                totals["entropy"] += entropy.sum().item()
                totals["low"] += terms.low_clipped.sum().item()
                totals["high"] += terms.high_clipped.sum().item()
                if terms.kl is not None:
                    totals["kl"] += terms.kl.detach().sum().item()
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.state.step += 1

        tokens = max(totals["tokens"], 1.0)
        metrics = trace_summary(traces, [p for p in pairs for _ in range(cfg.group_size)], rewards, self.keys)
        metrics.update({
            "loss": totals["loss"] / cfg.updates_per_rollout,
            "kl": totals["kl"] / tokens,
            "entropy": totals["entropy"] / tokens,
            "clip/low": totals["low"] / tokens,
            "clip/high": totals["high"] / tokens,
            "clip/fraction": (totals["low"] + totals["high"]) / tokens,
            "advantage/abs_mean": advantages.abs().mean().item(),
            "rows": float(len(rows)),
            "lr": self.scheduler.get_last_lr()[-1],
            "time/rollout_s": rollout_s,
            "time/step_s": time.perf_counter() - started,
        })
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        return metrics

    # ---------------------------------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict[str, float]:
        """Mean reward, accuracies, format rate and tool calls on the fixed eval pairs (shared across processes;
        each pair's episodes form one reward group)."""
        if not self.eval_pairs:
            return {}
        acc, cfg = self.accelerator, self.cfg
        mine = self.eval_pairs[acc.process_index :: acc.num_processes]
        rows = []
        if mine:
            seeds = [episode_seed(cfg.seed, "eval", pair.id, j) for pair in mine for j in range(cfg.eval_samples)]
            traces = self.rollout(self._envs(mine, cfg.eval_samples, seeds), cfg.sampling(greedy=cfg.eval_greedy),
                                  seeds)
            for g, pair in enumerate(mine):
                group = traces[g * cfg.eval_samples : (g + 1) * cfg.eval_samples]
                scored = group_rewards(group, pair.label, self.preset, step=self.state.step, variant=cfg.reward_variant)
                for trace, reward in zip(group, scored):
                    rows.append((trace, pair, reward))
        gathered = gather_object([(t.outcome, t.status, t.num_generated_tokens, p.label, r) for t, p, r in rows])
        n = len(gathered)
        out = {
            "eval/reward": sum(r.total for *_, r in gathered) / n,
            "eval/format_valid": sum(s == "answered" and r.format == 1.0 for _, s, _, _, r in gathered) / n,
            "eval/tool_calls": sum(o.num_tool_calls for o, *_ in gathered) / n,
            "eval/response_length": sum(length for _, _, length, _, _ in gathered) / n,
            "eval/episodes": float(n),
        }
        for key in self.keys:
            out[f"eval/accuracy/{key}"] = sum(o.verdicts.get(key) == label[key] for o, _, _, label, _ in gathered) / n
        return out

    # ------------------------------------------------------------------------------------- logs, checkpoints

    def _log(self, values: dict[str, float]) -> None:
        append_log(self.accelerator, self.log_dir, self.state.step, values)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically (``save_checkpoint_atomically``)."""
        return save_checkpoint_atomically(self.accelerator, self.output_dir, self.state.step, self.cfg.save_total_limit)

    def maybe_resume(self) -> Path | None:
        return resume_from_latest(self.accelerator, self.output_dir, self.log_dir, self.state) if self.cfg.resume else None

    # ---------------------------------------------------------------------------------------------------- loop

    def train(self) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.cfg
        acc.init_trackers("vrt_grpo")
        resumed = self.maybe_resume()
        start_step, started = self.state.step, time.perf_counter()
        first_eval = self.evaluate() if start_step == 0 else {}
        if first_eval:
            self._log(first_eval)
        window: list[dict[str, float]] = []
        progress = Progress(cfg.max_steps, initial=start_step, enabled=acc.is_main_process, desc="GRPO",
                            value_name="reward")
        reward = None
        while self.state.step < cfg.max_steps:
            window.append(self.train_step())
            step = self.state.step
            logged = step % cfg.logging_steps == 0 or step == cfg.max_steps
            if logged:
                reduced = self._reduce(window)
                self._log(reduced)
                reward = reduced.get("reward/mean", reward)
                window = []
            progress.update(step, reward, logged=logged)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps:
                self._log(self.evaluate())
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self.save_checkpoint()
        progress.close()
        final_eval = self.evaluate()
        if final_eval:
            self._log(final_eval)
        elapsed = time.perf_counter() - started
        return {
            "steps": self.state.step,
            "resumed_from": str(resumed) if resumed is not None else None,
            "train_seconds": round(elapsed, 2),
            "seconds_per_step": round(elapsed / max(self.state.step - start_step, 1), 3),
            "num_processes": acc.num_processes,
            "eval_start": first_eval,
            "eval_end": final_eval,
        }

    def _reduce(self, window: list[dict[str, float]]) -> dict[str, float]:
        """Mean of each metric over the window's steps and all processes (a status absent from a step counts 0)."""
        gathered = gather_object(window)
        keys = sorted({k for m in gathered for k in m})
        out = {}
        for key in keys:
            values = [m.get(key, 0.0) if key.startswith("status/") else m.get(key) for m in gathered]
            present = [v for v in values if v is not None]
            out[key] = float(np.mean(present))
        return out
