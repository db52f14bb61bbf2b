"""`RewardModel(backbone, head)`: a VLM backbone read at the last real token by a reward head.

One class serves training (`forward`, differentiable), evaluation and reward functions (`score`).
Inputs are processor batches from `mmreward.collate` (or packed pairs from
`mmreward.pair_forward`); outputs are rewards `[N, k]`, one column per named dimension.

Positions: Qwen-VL backbones use M-RoPE. The model computes `position_ids` itself with the
backbone's `get_rope_index` on every call, because a forward without them may silently reuse the
rope deltas cached by an earlier call.

Checkpoint layout (`save_pretrained(dir)`):

    reward_config.json   head config (name, dimensions, sizes), backbone path + family, tuning
    head.safetensors     the head's weights
    backbone/            full fine-tuning: the whole backbone (safetensors) as `from_pretrained` reads it
    adapter/             LoRA: the PEFT adapter (the base is the recorded backbone path)
    processor files      so the directory alone is enough to encode inputs

Head-only and LoRA checkpoints reference the base backbone by the path recorded at training time;
`from_pretrained(dir, backbone_path=...)` points them elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmreward.backbones.vlm import (
    LoRASettings, VLMLoadConfig, apply_lora, freeze_vision_tower, load_vlm, require_safetensors, unwrap_peft,
)
from mmreward.collate import last_token_index
from mmreward.heads import RewardHead, build_head, head_from_config
from mmreward.pair_forward import block_attention_mask, packed_position_ids

CONFIG_NAME = "reward_config.json"
HEAD_WEIGHTS = "head.safetensors"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
FORMAT = "mmreward.reward_model"
TUNING_MODES = ("full", "lora", "head")
# Processor outputs the backbone consumes (besides input_ids / attention_mask / positions).
_MODEL_INPUT_KEYS = (
    "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
    "second_per_grid_ts", "mm_token_type_ids",
)
_DEFAULT_LORA_TARGETS = list(LoRASettings.target_modules)


class RewardModelError(ValueError):
    """A checkpoint or configuration that cannot be used (the message names the file)."""


@dataclass
class TuningConfig:
    """Which parameters train.

    mode: "full" (backbone and head), "lora" (LoRA adapters on the language model + head) or
        "head" (head only; the backbone is frozen).
    freeze_vision: keep the vision tower frozen in full mode (LoRA and head modes never train it).
    lora_r / lora_alpha / lora_dropout: LoRA rank, scaling numerator and dropout.
    lora_target_modules: projection names inside the language model that get adapters.
    gradient_checkpointing: recompute activations in the backward pass (less memory, slower).
    """

    mode: str = "full"
    freeze_vision: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(_DEFAULT_LORA_TARGETS))
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mode not in TUNING_MODES:
            raise ValueError(f"TuningConfig.mode must be one of {TUNING_MODES}, got {self.mode!r}")
        if self.lora_r <= 0:
            raise ValueError(f"TuningConfig.lora_r must be positive, got {self.lora_r}")


def _load_backbone(path: str | Path, dtype: str, attn_implementation: str) -> tuple[nn.Module, Any]:
    return load_vlm(VLMLoadConfig(path=str(path), dtype=dtype, attn_implementation=attn_implementation))


class RewardModel(nn.Module):
    """Rewards `[N, k]` from a VLM backbone and a registered head.

    backbone: a transformers image-text-to-text model (optionally PEFT-wrapped).
    head: a `RewardHead`; its `dimensions` name the reward columns.
    backbone_path: where the base backbone was loaded from (recorded in checkpoints).
    tuning: which parameters train (applied here).
    processor: the backbone's processor, kept for encoding inputs and saved with checkpoints.
    """

    def __init__(self, backbone: nn.Module, head: RewardHead, backbone_path: str | None = None,
                 tuning: TuningConfig | None = None, processor: Any | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_path = backbone_path
        self.tuning = tuning or TuningConfig()
        self.processor = processor
        if processor is not None:
            head.bind_processor(processor)  # e.g. the yes_token head looks up its verdict token ids
        hidden = unwrap_peft(backbone).config.get_text_config().hidden_size
        if head.hidden_size != hidden:
            raise RewardModelError(f"head expects hidden size {head.hidden_size}, backbone has {hidden}")
        self._apply_tuning()

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(
        cls,
        backbone_path: str | Path,
        head: str = "scalar",
        dimensions: Sequence[str] = ("overall",),
        head_options: Mapping[str, Any] | None = None,
        tuning: TuningConfig | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
    ) -> "RewardModel":
        """A new reward model: the backbone (and processor) from `backbone_path` plus a fresh head."""
        backbone, processor = _load_backbone(backbone_path, dtype, attn_implementation)
        hidden = backbone.config.get_text_config().hidden_size
        reward_head = build_head(head, hidden, dimensions, **dict(head_options or {}))
        path = Path(backbone_path)
        recorded = str(path.resolve()) if path.exists() else str(backbone_path)
        return cls(backbone, reward_head, backbone_path=recorded, tuning=tuning, processor=processor)

    def _apply_tuning(self) -> None:
        """Set `requires_grad` (and add LoRA adapters) according to `self.tuning`."""
        tuning = self.tuning
        if tuning.mode == "lora" and not hasattr(self.backbone, "get_base_model"):
            lora = LoRASettings(r=tuning.lora_r, alpha=tuning.lora_alpha, dropout=tuning.lora_dropout,
                                target_modules=tuple(tuning.lora_target_modules))
            self.backbone = apply_lora(self.backbone, lora)
        base = unwrap_peft(self.backbone)
        if tuning.mode == "full":
            base.requires_grad_(True)
            if tuning.freeze_vision:
                freeze_vision_tower(base)
            if not self.head.uses_lm_head:
                # Unused parameters would stall DDP's gradient reduction and waste optimizer state.
                base.get_output_embeddings().requires_grad_(False)
        elif tuning.mode == "head":
            base.requires_grad_(False)
        # lora: apply_lora froze every base weight; only the adapters train.
        self.head.requires_grad_(True)
        if tuning.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False

    # ------------------------------------------------------------------------------ forward

    @property
    def dimensions(self) -> list[str]:
        return list(self.head.dimensions)

    def _inner(self) -> nn.Module:
        return unwrap_peft(self.backbone).model

    def _position_ids(self, inputs: Mapping[str, torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        inner = self._inner()
        if not hasattr(inner, "get_rope_index"):
            raise RewardModelError(f"{type(inner).__name__}: no get_rope_index; only Qwen-VL backbones are supported")
        mm_types = inputs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = torch.zeros_like(inputs["input_ids"])
        media = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
        positions, _ = inner.get_rope_index(inputs["input_ids"], mm_token_type_ids=mm_types,
                                            attention_mask=attention_mask, **media)
        return positions

    def hidden_states(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden state at each read position: `[N, H]` (N = 2P for packed pairs)."""
        inner = self._inner()
        extra = {k: inputs[k] for k in _MODEL_INPUT_KEYS if k in inputs}
        if "segment_ids" in inputs:
            return self._packed_hidden_states(inputs, extra)
        attention_mask = inputs["attention_mask"]
        out = inner(
            input_ids=inputs["input_ids"],
            attention_mask=attention_mask,
            position_ids=self._position_ids(inputs, attention_mask),
            use_cache=False,
            **extra,
        )
        hidden = out.last_hidden_state
        index = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]

    def _packed_hidden_states(self, inputs: Mapping[str, torch.Tensor], extra: dict) -> torch.Tensor:
        inner = self._inner()
        input_ids = inputs["input_ids"]
        positions = packed_position_ids(inner.get_rope_index, dict(inputs))
        mask = block_attention_mask(inner.language_model.config, self._dtype(), inputs["attention_mask"],
                                    inputs["segment_ids"])
        out = inner(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra)
        hidden = out.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        read = inputs["read_index"]
        # All a sides, then all b sides: the same order as the naive form.
        return torch.cat([hidden[rows, read[:, 0]], hidden[rows, read[:, 1]]], dim=0)

    def _dtype(self) -> torch.dtype:
        return unwrap_peft(self.backbone).get_input_embeddings().weight.dtype

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable rewards `[N, k]` for a processor batch or a packed pair batch."""
        hidden = self.hidden_states(inputs)
        lm_head = unwrap_peft(self.backbone).get_output_embeddings() if self.head.uses_lm_head else None
        return self.head(hidden, lm_head)

    @torch.no_grad()
    def score(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Rewards `[N, k]` without gradients (the caller chooses train/eval mode); `head.to_reward` of `forward`."""
        return self.head.to_reward(self.forward(inputs))

    def pair_loss(self, rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                  loss_cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a pair batch's rewards `[2P, k]` (a sides then b sides); the head picks the loss."""
        num_pairs = labels.shape[0]
        if rewards.shape[0] != 2 * num_pairs:
            raise ValueError(f"{rewards.shape[0]} rewards for {num_pairs} pairs (expected {2 * num_pairs})")
        return self.head.pair_loss(rewards[:num_pairs], rewards[num_pairs:], labels, mask, loss_cfg)

    # ------------------------------------------------------------------------------ checkpoints

    def config_dict(self) -> dict[str, Any]:
        base = unwrap_peft(self.backbone)
        return {
            "format": FORMAT,
            "version": 1,
            "head": self.head.config(),
            "backbone": {
                "path": self.backbone_path,
                "family": base.config.model_type,
                "dtype": str(self._dtype()).removeprefix("torch."),
            },
            "tuning": asdict(self.tuning),
        }

    def save_pretrained(self, out_dir: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write the checkpoint (layout in the module docstring); returns the directory.

        state_dict: this model's full state dict when its parameters are sharded (FSDP, ZeRO-3:
        `accelerator.get_state_dict(model)`); default: `self.state_dict()`.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        head_state = {k.removeprefix("head."): v.detach().contiguous().cpu() for k, v in state.items()
                      if k.startswith("head.")}
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        save_file(head_state, out / HEAD_WEIGHTS, metadata={"format": "pt"})
        if self.tuning.mode == "full":
            # A complete VLM directory (weights + processor), loadable on its own.
            unwrap_peft(self.backbone).save_pretrained(out / BACKBONE_DIR, state_dict=backbone_state)
            if self.processor is not None:
                self.processor.save_pretrained(out / BACKBONE_DIR)
        elif self.tuning.mode == "lora":
            self.backbone.save_pretrained(out / ADAPTER_DIR, state_dict=backbone_state)
        if self.processor is not None:
            self.processor.save_pretrained(out)
        (out / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, backbone_path: str | Path | None = None,
                        dtype: str = "auto", attn_implementation: str = "sdpa",
                        trainable: bool = False) -> "RewardModel":
        """Load a checkpoint written by `save_pretrained`.

        backbone_path: base backbone for head-only / LoRA checkpoints (default: the recorded path).
        trainable: keep the checkpoint's tuning (requires_grad, train mode) instead of freezing
            everything and switching to eval mode.
        """
        ckpt = Path(checkpoint_dir)
        config_path = ckpt / CONFIG_NAME
        if not config_path.is_file():
            raise RewardModelError(f"{config_path}: missing; {ckpt} is not a reward model checkpoint")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise RewardModelError(f"{config_path}: not valid JSON ({err})") from err
        if config.get("format") != FORMAT:
            raise RewardModelError(f"{config_path}: format is {config.get('format')!r}, expected {FORMAT!r}")
        tuning = TuningConfig(**config["tuning"])
        base_path = str(backbone_path or config["backbone"]["path"])
        source = ckpt / BACKBONE_DIR if tuning.mode == "full" else base_path
        backbone, processor = _load_backbone(source, dtype, attn_implementation)
        if tuning.mode == "lora":
            from peft import PeftModel

            require_safetensors(ckpt / ADAPTER_DIR, what="LoRA adapter")  # peft would fall back to a .bin pickle
            backbone = PeftModel.from_pretrained(backbone, str(ckpt / ADAPTER_DIR), is_trainable=trainable)
        if (ckpt / "preprocessor_config.json").is_file() or (ckpt / "processor_config.json").is_file():
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(ckpt))
        head = head_from_config(config["head"])
        weights = ckpt / HEAD_WEIGHTS
        if not weights.is_file():
            raise RewardModelError(f"{weights}: missing")
        try:
            head.load_state_dict(load_file(weights), strict=True)
        except RuntimeError as err:  # missing/unexpected keys or shape mismatches
            raise RewardModelError(f"{weights}: does not match the head config in {config_path} ({err})") from err
        model = cls(backbone, head, backbone_path=base_path, tuning=tuning, processor=processor)
        if not trainable:
            model.requires_grad_(False)
            model.eval()
        return model


class RewardEnsemble:
    """Several reward models scored on the same inputs: their mean reward and its spread.

    Members must name the same dimensions and share one processor configuration (same backbone
    family), because one encoded batch feeds them all; `processor` is the first member's.
    """

    def __init__(self, models: Sequence[RewardModel]):
        if not models:
            raise RewardModelError("an ensemble needs at least one reward model")
        dims = models[0].dimensions
        for i, member in enumerate(models[1:], start=1):
            if member.dimensions != dims:
                raise RewardModelError(f"ensemble member {i} has dimensions {member.dimensions}, member 0 has {dims}")
            if member.processor is not None and models[0].processor is not None and (
                type(member.processor) is not type(models[0].processor)
                or member.processor.tokenizer.get_vocab() != models[0].processor.tokenizer.get_vocab()
            ):
                raise RewardModelError(f"ensemble member {i} uses a different processor than member 0")
        self.models = list(models)
        self.dimensions = list(dims)
        self.processor = models[0].processor

    @classmethod
    def from_pretrained(cls, checkpoint_dirs: Sequence[str | Path], **kwargs: Any) -> "RewardEnsemble":
        return cls([RewardModel.from_pretrained(d, **kwargs) for d in checkpoint_dirs])

    def score(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mean, std)` over the members, each `[N, k]` (population std: 0 for one member)."""
        scores = torch.stack([member.score(inputs) for member in self.models])
        return scores.mean(dim=0), scores.std(dim=0, unbiased=False)
