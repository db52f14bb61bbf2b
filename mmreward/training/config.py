"""Dataclass settings of the reward-model training stage (flat fields, so TRL's `TrlParser` reads
them from YAML and `--key value` flags)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from mmreward.cli import module_names

if TYPE_CHECKING:  # the settings' own types load torch: imported where they are built, not to parse flags
    from mmreward.collate import CollateConfig
    from mmreward.data.media import MediaConfig
    from mmreward.losses import PreferenceLossConfig
    from mmreward.model import ScoringSettings, TuningConfig

HEAD_NAMES = module_names("mmreward.heads", exclude=("base",))  # a head's name is its module's


def settings_mapping(value: dict | str | None, name: str) -> dict:
    """A setting that holds options: a YAML mapping, a JSON object string (from a flag) or None (no options)."""
    try:
        mapping = json.loads(value) if isinstance(value, str) else (value or {})
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} must be a mapping (YAML or a JSON object), got {value!r}: {err}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{name} must be a mapping (YAML or a JSON object), got {value!r}")
    return mapping


@dataclass
class RewardModelArguments:
    """The reward model to train."""

    backbone: str = field(default="", metadata={"help": "VLM directory (or hub id) the reward model starts from"})
    head: str = field(default="scalar", metadata={"help": "reward head: " + " | ".join(HEAD_NAMES)})
    dimensions: list[str] = field(default_factory=lambda: ["overall"],
                                  metadata={"help": "reward dimensions, e.g. VQ TA overall (label keys)"})
    head_inner_dim: int | None = field(default=None, metadata={"help": "scalar head width d (default: hidden size)"})
    head_kwargs: dict | str | None = field(
        default=None, metadata={"help": "more head options: a YAML mapping or a JSON string, e.g. yes_token's "
                                        '\'{"probability": "binary", "form": "pairwise"}\''},
    )
    tuning_mode: str = field(default="full", metadata={"help": "full | lora | head"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen (full mode)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing"})
    dtype: str = field(default="float32", metadata={"help": "backbone weights dtype: float32 | bfloat16 | auto"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    positions: str = field(default="mrope", metadata={
        "help": "mrope (the backbone's M-RoPE) | sequential (0..L-1 on every axis, as VideoAlign trained)"})
    overall: str | None = field(default=None, metadata={
        "help": "learned (an 'overall' dimension) | sum (of the dimensions, normalised when normalising); "
                "default: learned if 'overall' is a dimension, else sum"})
    reward_stats: bool = field(default=True, metadata={
        "help": "after training, store the mean and std of the model's rewards on the training pairs"})
    normalize: bool = field(default=False, metadata={
        "help": "report rewards normalised by those statistics by default (VideoAlign does)"})

    def tuning(self) -> TuningConfig:
        from mmreward.model import TuningConfig

        return TuningConfig(
            mode=self.tuning_mode, freeze_vision=self.freeze_vision, lora_r=self.lora_r,
            lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            gradient_checkpointing=self.gradient_checkpointing,
        )

    def scoring(self, data: RewardDataArguments) -> ScoringSettings:
        """How the trained model reads inputs and reports rewards (saved with it)."""
        if self.normalize and not self.reward_stats:
            raise ValueError("normalize needs reward_stats (the statistics it normalises with)")
        overall = self.overall or ("learned" if "overall" in self.dimensions else "sum")
        from mmreward.model import ScoringSettings

        return ScoringSettings(positions=self.positions, overall=overall, normalize=self.normalize,
                               collate=data.collate(), media=data.media())

    def head_options(self) -> dict:
        options = {"inner_dim": self.head_inner_dim} if self.head_inner_dim is not None else {}
        return {**options, **settings_mapping(self.head_kwargs, "head_kwargs")}


@dataclass
class RewardDataArguments:
    """Preference records and how they are encoded."""

    train_file: str = field(default="", metadata={"help": "training records (JSONL)"})
    val_file: str | None = field(default=None, metadata={"help": "validation records (JSONL)"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "leave out bad records (each reported) instead of stopping at the first one"})
    max_train_records: int | None = field(default=None, metadata={"help": "use only the first N training records"})
    max_val_records: int | None = field(default=None, metadata={"help": "use only the first N validation records"})
    max_pixels: int | None = field(default=None, metadata={"help": "downsize images above this many pixels"})
    num_frames: int | None = field(default=8, metadata={"help": "frames sampled per video"})
    video_fps: float | None = field(default=None, metadata={"help": "sample videos at this fps instead"})
    video_sampling: str = field(default="uniform", metadata={
        "help": "uniform | qwen (Qwen-VL / VideoAlign frame rules and 28-multiple frame sizes)"})
    video_min_pixels: int | None = field(default=None, metadata={"help": "qwen sampling: smallest frame area"})
    video_max_pixels: int | None = field(default=None, metadata={"help": "qwen sampling: largest frame area"})
    prompt_template: str = field(default="{prompt}", metadata={"help": "user text; {prompt} is replaced"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system turn"})
    padding_side: str = field(default="right", metadata={"help": "left | right"})
    max_length: int | None = field(default=None, metadata={"help": "refuse longer sequences"})
    pair_form: str = field(default="auto", metadata={"help": "naive | shared_prefix | auto"})

    def media(self) -> MediaConfig:
        from mmreward.data.media import MediaConfig

        return MediaConfig(num_frames=None if self.video_fps is not None else self.num_frames, fps=self.video_fps,
                           max_pixels=self.max_pixels, video_sampling=self.video_sampling,
                           video_min_pixels=self.video_min_pixels, video_max_pixels=self.video_max_pixels)

    def collate(self) -> CollateConfig:
        from mmreward.collate import CollateConfig

        return CollateConfig(
            prompt_template=self.prompt_template, system_prompt=self.system_prompt,
            padding_side=self.padding_side, max_length=self.max_length, pair_form=self.pair_form,
        )


@dataclass
class RewardTrainingConfig:
    """The training loop.

    Steps count optimizer updates; each consumes `grad_accum_steps` micro-batches of `batch_size`
    pairs per process. The data position is a pure function of the step, so a resumed run reads
    exactly the batches an uninterrupted run would.
    """

    output_dir: str = field(default="", metadata={"help": "stage output directory"})
    seed: int = field(default=0, metadata={"help": "seed for the head init, data order and dropout"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps"})
    epochs: float | None = field(default=None, metadata={
        "help": "train for this many passes over the training pairs instead (sets max_steps)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per process per micro-batch"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    eval_batch_size: int = field(default=32, metadata={"help": "pairs per process in validation"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate (backbone)"})
    head_learning_rate: float | None = field(default=None, metadata={"help": "head learning rate (default: learning_rate)"})
    vision_learning_rate: float | None = field(
        default=None, metadata={"help": "vision tower learning rate when it trains (default: learning_rate)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "transformers scheduler name"})
    lr_scheduler_kwargs: dict | str | None = field(
        default=None, metadata={"help": "the scheduler's own options: a YAML mapping or a JSON string, e.g. "
                                        "warmup_stable_decay's '{\"num_decay_steps\": 300}'"})
    warmup_steps: int = field(default=0, metadata={"help": "learning-rate warm-up steps"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up as a share of max_steps (the larger wins)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    loss_kind: str = field(default="bt", metadata={"help": "bt | btt (Bradley-Terry with ties)"})
    margin: float = field(default=0.0, metadata={"help": "BT margin"})
    tie_theta: float = field(default=5.0, metadata={"help": "BTT tie parameter"})
    center_coef: float = field(default=0.0, metadata={"help": "reward centering weight"})
    curriculum_steps: int = field(default=0, metadata={
        "help": "warm-up steps on curriculum subsets first, split evenly among the curriculum_varies phases"})
    curriculum_varies: list[str] = field(
        default_factory=list,
        metadata={"help": "warm-up phases in order, each a dimension or '+'-joined dimensions (e.g. TA TA+MQ): "
                          "records whose meta['varies'] is non-empty and within that phase's dimensions"},
    )
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    eval_steps: int = field(default=0, metadata={"help": "validate every N steps (0: only at the end)"})
    eval_at_start: bool = field(default=False, metadata={"help": "validate the untrained model first (step 0)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: no intermediate checkpoints)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (oldest removed)"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in output_dir"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even if a GPU is present"})
    torch_threads: int = field(default=0, metadata={
        "help": "intra-op CPU threads per process (0: torch's default); 1 is fastest on a busy or small CPU"})
    check_replicas: bool = field(default=True, metadata={"help": "verify at the end that all DDP ranks hold the same weights"})

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("eval_steps", "save_steps", "curriculum_steps", "warmup_steps", "num_workers", "torch_threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.save_total_limit < 1:
            problems.append("save_total_limit must be >= 1")
        if self.epochs is not None and not self.epochs > 0:
            problems.append("epochs must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append("warmup_ratio must be in [0, 1)")
        if self.curriculum_steps and not self.curriculum_varies:
            problems.append("curriculum_steps needs curriculum_varies (the warm-up dimensions)")
        if self.curriculum_steps and self.curriculum_steps < len(self.curriculum_varies):
            problems.append("curriculum_steps must give each curriculum_varies phase at least one step")
        try:
            self.scheduler_options()
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("invalid RewardTrainingConfig: " + "; ".join(problems))
        self.loss()  # validates loss_kind / tie_theta / margin / center_coef

    def resolve_steps(self, num_pairs: int, num_processes: int) -> None:
        """Turn `epochs` into `max_steps` and `warmup_ratio` into `warmup_steps` for `num_pairs` training pairs
        (each step takes batch_size x grad_accum_steps pairs on each of `num_processes` processes)."""
        if self.epochs is not None:
            per_step = self.batch_size * self.grad_accum_steps * num_processes
            self.max_steps = max(1, math.ceil(self.epochs * num_pairs / per_step))
        self.warmup_steps = max(self.warmup_steps, math.ceil(self.warmup_ratio * self.max_steps))

    def scheduler_options(self) -> dict:
        """`lr_scheduler_kwargs` as a dict (transformers' `scheduler_specific_kwargs`)."""
        return settings_mapping(self.lr_scheduler_kwargs, "lr_scheduler_kwargs")

    def loss(self) -> PreferenceLossConfig:
        from mmreward.losses import PreferenceLossConfig

        return PreferenceLossConfig(kind=self.loss_kind, margin=self.margin, tie_theta=self.tie_theta,
                                    center_coef=self.center_coef)
