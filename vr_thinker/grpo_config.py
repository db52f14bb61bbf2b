"""The settings of the VR-Thinker GRPO loop (:class:`vr_thinker.grpo_loop.GRPOLoop`), apart from the loop so that a
stage's ``--help`` reads them without importing torch (what the methods need is imported when they are called)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vr_thinker.presets import ProtocolPreset

if TYPE_CHECKING:
    from vr_thinker.grpo import GRPOLossConfig
    from vr_thinker.rollout import SamplingConfig

ADVANTAGE_SCALES = ("std", "none")
KL_PLACES = ("reward", "loss")
LOSS_AGGREGATIONS = ("constant", "token_mean", "trace_mean")


@dataclass
class GRPOConfig:
    """Settings of the GRPO loop (flat fields, so ``TrlParser`` reads them from YAML and ``--key value``).

    A step is one rollout batch (``pairs_per_step`` pairs x ``group_size`` episodes per process) followed by
    ``updates_per_rollout`` optimizer steps on it; ``max_steps``, ``logging_steps``, ``eval_steps`` and
    ``save_steps`` count steps. Fields left None take the preset's GRPO defaults (:meth:`resolved`).
    """

    output_dir: str = field(default="", metadata={"help": "stage output directory (checkpoints/, logs/)"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and the rollout sampling"})
    max_steps: int = field(default=100, metadata={"help": "rollout steps"})
    pairs_per_step: int = field(default=2, metadata={"help": "pairs rolled out per step and process"})
    group_size: int | None = field(default=None, metadata={"help": "G: episodes per pair (one advantage group)"})
    updates_per_rollout: int = field(default=1, metadata={"help": "optimizer steps per rollout batch (mu)"})
    micro_batch_rows: int = field(default=4, metadata={"help": "training rows per forward"})
    rollout_batch_size: int = field(default=0, metadata={"help": "episodes per generation batch (0: all at once)"})
    learning_rate: float | None = field(default=None, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "transformers scheduler name"})
    warmup_steps: int = field(default=0, metadata={"help": "warm-up optimizer steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    clip_low: float | None = field(default=None, metadata={"help": "ratio clipped below at 1 - clip_low"})
    clip_high: float | None = field(default=None, metadata={"help": "ratio clipped above at 1 + clip_high (DAPO)"})
    kl_coef: float | None = field(default=None, metadata={"help": "k3 KL coefficient (0: no reference model)"})
    kl_in: str | None = field(default=None, metadata={"help": "reward (official) | loss: where the KL enters"})
    entropy_coef: float | None = field(default=None, metadata={"help": "entropy bonus coefficient"})
    loss_aggregation: str | None = field(default=None, metadata={"help": "constant | token_mean | trace_mean"})
    loss_constant: float | None = field(default=None, metadata={"help": "divisor of the summed token losses"})
    advantage_scale: str = field(default="std", metadata={"help": "std (GRPO) | none (Dr. GRPO)"})
    advantage_eps: float | None = field(default=None, metadata={"help": "added to the group std"})
    advantage_population_std: bool = field(default=True, metadata={"help": "population std (official) or unbiased"})
    reward_variant: str | None = field(default=None, metadata={"help": "official | paper (default: the preset's)"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature of the first turn"})
    later_temperature: float | None = field(default=None, metadata={"help": "sampling temperature of later turns"})
    logprob_temperature: float = field(default=1.0, metadata={"help": "logits are divided by it for log-probs"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling (1 = off)"})
    top_k: int | None = field(default=None, metadata={"help": "top-k sampling (0 = off)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "token limit per assistant turn"})
    merge_rows: bool = field(default=True, metadata={"help": "one row for turns whose contexts extend each other"})
    logging_steps: int = field(default=1, metadata={"help": "log every N steps"})
    eval_steps: int = field(default=0, metadata={"help": "run the fixed eval set every N steps (0: start and end)"})
    eval_samples: int = field(default=1, metadata={"help": "episodes per eval pair"})
    eval_greedy: bool = field(default=True, metadata={"help": "greedy eval (else sampled with a fixed seed)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: none)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in output_dir"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even with a GPU"})
    torch_threads: int = field(default=0, metadata={"help": "intra-op CPU threads (0: torch's default)"})

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_steps", "pairs_per_step", "group_size", "updates_per_rollout", "micro_batch_rows",
                     "logging_steps", "eval_samples", "max_new_tokens", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            problems.append(f"advantage_scale must be one of {ADVANTAGE_SCALES}")
        for name in ("temperature", "later_temperature", "logprob_temperature"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be > 0")
        if self.kl_in is not None and self.kl_in not in KL_PLACES:
            problems.append(f"kl_in must be one of {KL_PLACES}")
        if self.loss_aggregation is not None and self.loss_aggregation not in LOSS_AGGREGATIONS:
            problems.append(f"loss_aggregation must be one of {LOSS_AGGREGATIONS}")
        if self.reward_variant not in (None, "official", "paper"):
            problems.append("reward_variant must be official or paper")
        if problems:
            raise ValueError("; ".join(problems))

    def resolved(self, preset: ProtocolPreset) -> GRPOConfig:
        """A copy with every unset (None) setting taken from the preset's GRPO defaults."""
        defaults = preset.grpo
        values = {name: getattr(defaults, name) for name in (
            "group_size", "learning_rate", "clip_low", "clip_high", "kl_coef", "kl_in", "entropy_coef",
            "loss_aggregation", "loss_constant", "advantage_eps", "temperature", "later_temperature", "top_p",
            "top_k", "max_new_tokens") if getattr(self, name) is None}
        if self.reward_variant is None:
            values["reward_variant"] = preset.reward.variant
        return replace(self, **values)

    def loss(self) -> GRPOLossConfig:
        from vr_thinker.grpo import GRPOLossConfig

        return GRPOLossConfig(self.clip_low, self.clip_high, self.kl_coef, self.kl_in, self.entropy_coef)

    def sampling(self, greedy: bool = False) -> SamplingConfig:
        """How episodes are generated (seeds are given per episode)."""
        from vr_thinker.rollout import SamplingConfig

        return SamplingConfig(max_new_tokens=self.max_new_tokens, do_sample=not greedy, temperature=self.temperature,
                              later_temperature=self.later_temperature, top_k=self.top_k, top_p=self.top_p)
