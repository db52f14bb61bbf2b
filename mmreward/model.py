"""`RewardModel(backbone, head)`: a VLM backbone read by a reward head at the head's read positions.

One class serves training (`forward`, differentiable), evaluation and reward functions (`score`),
and one-call scoring of files (`reward`). Inputs are processor batches from `mmreward.collate`
(or packed pairs from `mmreward.forward.packed`); outputs are rewards `[N, k]`, one column per
named dimension.

Positions (`ScoringSettings.positions`): Qwen-VL backbones use M-RoPE. By default the model
computes `position_ids` with the backbone's `get_rope_index` on every call, because a forward
without them may silently reuse the rope deltas cached by an earlier call. VideoAlign's released
checkpoints were trained with plain positions 0..L-1 on all three axes instead ("sequential").

Rewards as reported (`ScoringSettings`): optionally z-normalised per dimension with statistics
stored in the checkpoint (`reward_stats`, the model's rewards on its training pairs), and an
"overall" that is either a learned dimension or the sum of the other dimensions (VideoAlign's).

Checkpoint layout (`save_pretrained(dir)`; `from_pretrained` also reads VideoAlign's layout, see
`mmreward.videoalign`):

    reward_config.json        head config, backbone path + family, tuning, scoring settings, statistics
    head.safetensors          the head's weights
    backbone/                 full fine-tuning: the whole backbone (safetensors) as `from_pretrained` reads it
    adapter/                  LoRA: the PEFT adapter (the base is the recorded backbone path)
    trained_base.safetensors  LoRA / head modes: base weights that trained too (e.g. the vision tower)
    token_embeddings.safetensors  the input-embedding rows of the head's own tokens (reward_token)
    processor files           so the directory alone is enough to encode inputs

Head-only and LoRA checkpoints reference the base backbone by the path recorded at training time;
`from_pretrained(dir, backbone_path=...)` points them elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmreward.backbones.vlm import (
    LoRASettings,
    VLMLoadConfig,
    apply_lora,
    freeze_vision_tower,
    load_vlm,
    require_safetensors,
    unwrap_peft,
    vision_tower,
)
from mmreward.collate import CollateConfig, processor_image_size
from mmreward.data.dataset import MediaConfig, media_side
from mmreward.data.media import MediaError
from mmreward.errors import MmrewardError
from mmreward.heads import RewardHead, build_head, head_from_config
from mmreward.forward.packed import block_attention_mask, packed_position_ids

CONFIG_NAME = "reward_config.json"
HEAD_WEIGHTS = "head.safetensors"
TRAINED_BASE_WEIGHTS = "trained_base.safetensors"
TOKEN_EMBEDDINGS = "token_embeddings.safetensors"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
FORMAT = "mmreward.reward_model"
TUNING_MODES = ("full", "lora", "head")
POSITION_MODES = ("mrope", "sequential")
OVERALL_MODES = ("learned", "sum")
# Processor outputs the backbone consumes (besides input_ids / attention_mask / positions).
_MODEL_INPUT_KEYS = (
    "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
    "second_per_grid_ts", "mm_token_type_ids",
)
_DEFAULT_LORA_TARGETS = list(LoRASettings.target_modules)


class RewardModelError(MmrewardError, ValueError):
    """A checkpoint or configuration that cannot be used (the message names the file)."""


class RewardInputError(MmrewardError, ValueError):
    """Some items given to `RewardModel.reward` could not be read; the others were scored.

    errors: item index -> the MediaError (or TypeError) naming its file. rewards: every item's
    rewards in input order, None where the item failed.
    """

    def __init__(self, errors: dict[int, Exception], rewards: list[dict[str, float] | None]):
        self.errors, self.rewards = errors, rewards
        lines = "; ".join(f"item {i}: {err}" for i, err in sorted(errors.items()))
        super().__init__(f"{len(errors)} of {len(rewards)} items could not be scored: {lines}")


@dataclass
class TuningConfig:
    """Which parameters train.

    mode: "full" (backbone and head), "lora" (LoRA adapters on the language model + head) or
        "head" (head only; the backbone is frozen).
    freeze_vision: keep the vision tower frozen (full and LoRA modes; with False it trains fully
        beside the adapters, as in VideoAlign's recipe). Head mode never trains it.
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


@dataclass
class ScoringSettings:
    """How the model reads its inputs and reports rewards; saved with the checkpoint, so evaluation,
    one-call scoring and reward servers score a model as it was trained.

    positions: "mrope" (the backbone's own M-RoPE positions) or "sequential" (0..L-1 on all three
        axes: VideoAlign's forward, which its released weights expect).
    overall: "learned" (an "overall" dimension of the head) or "sum" (overall = the sum of the
        dimensions, normalised when normalisation is on: VideoAlign's Overall).
    normalize: report rewards as (r - mean) / std with the checkpoint's statistics by default.
    collate: the chat layout the model was trained with.
    media: how its images and videos were decoded.
    """

    positions: str = "mrope"
    overall: str = "learned"
    normalize: bool = False
    collate: CollateConfig = field(default_factory=CollateConfig)
    media: MediaConfig = field(default_factory=MediaConfig)

    def __post_init__(self) -> None:
        if isinstance(self.collate, dict):
            self.collate = CollateConfig(**self.collate)
        if isinstance(self.media, dict):
            self.media = MediaConfig(**self.media)
        if self.positions not in POSITION_MODES:
            raise ValueError(f"ScoringSettings.positions must be one of {POSITION_MODES}, got {self.positions!r}")
        if self.overall not in OVERALL_MODES:
            raise ValueError(f"ScoringSettings.overall must be one of {OVERALL_MODES}, got {self.overall!r}")

    @classmethod
    def for_dimensions(cls, dimensions: Sequence[str], **kwargs: Any) -> "ScoringSettings":
        """Settings whose `overall` is "learned" when "overall" is a dimension and "sum" otherwise."""
        return cls(overall="learned" if "overall" in dimensions else "sum", **kwargs)


def sequential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[3, B, L]` positions 0..n-1 over each row's real tokens on all three M-RoPE axes (padding: 0)."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions.masked_fill(attention_mask == 0, 0)[None].expand(3, -1, -1)


def _load_backbone(path: str | Path, dtype: str, attn_implementation: str) -> tuple[nn.Module, Any]:
    return load_vlm(VLMLoadConfig(path=str(path), dtype=dtype, attn_implementation=attn_implementation))


class RewardModel(nn.Module):
    """Rewards `[N, k]` from a VLM backbone and a registered head.

    backbone: a transformers image-text-to-text model (optionally PEFT-wrapped).
    head: a `RewardHead`; its `dimensions` name the reward columns.
    backbone_path: where the base backbone was loaded from (recorded in checkpoints).
    tuning: which parameters train (applied here).
    processor: the backbone's processor, kept for encoding inputs and saved with checkpoints.
    settings: how inputs are read and rewards reported (`ScoringSettings`).
    reward_stats: per-dimension {"mean", "std"} of the model's rewards (for normalisation).
    """

    def __init__(self, backbone: nn.Module, head: RewardHead, backbone_path: str | None = None,
                 tuning: TuningConfig | None = None, processor: Any | None = None,
                 settings: ScoringSettings | None = None,
                 reward_stats: Mapping[str, Mapping[str, float]] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_path = backbone_path
        self.tuning = tuning or TuningConfig()
        self.processor = processor
        self.settings = settings or ScoringSettings.for_dimensions(head.dimensions)
        if self.settings.overall == "learned" and "overall" not in head.dimensions:
            raise RewardModelError(f"overall='learned' needs an 'overall' dimension; the head has {head.dimensions}")
        if self.settings.overall == "sum" and "overall" in head.dimensions:
            raise RewardModelError("overall='sum' adds up the dimensions: the head must not have an 'overall' one")
        self.reward_stats: dict[str, dict[str, float]] | None = None
        if reward_stats is not None:
            self.set_reward_stats(reward_stats)
        if processor is not None:
            head.bind_processor(processor)  # e.g. the yes_token head looks up its verdict token ids
        hidden = unwrap_peft(backbone).config.get_text_config().hidden_size
        if head.hidden_size != hidden:
            raise RewardModelError(f"head expects hidden size {head.hidden_size}, backbone has {hidden}")
        self._token_row_hook: Any = None
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
        settings: ScoringSettings | None = None,
    ) -> "RewardModel":
        """A new reward model: the backbone (and processor) from `backbone_path` plus a fresh head."""
        backbone, processor = _load_backbone(backbone_path, dtype, attn_implementation)
        hidden = backbone.config.get_text_config().hidden_size
        reward_head = build_head(head, hidden, dimensions, **dict(head_options or {}))
        reward_head.prepare_backbone(backbone, processor)  # e.g. reward_token adds its tokens
        path = Path(backbone_path)
        recorded = str(path.resolve()) if path.exists() else str(backbone_path)
        return cls(backbone, reward_head, backbone_path=recorded, tuning=tuning, processor=processor,
                   settings=settings)

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
        elif not tuning.freeze_vision:  # lora: apply_lora froze every base weight; the adapters train
            vision_tower(base).requires_grad_(True)
        self.head.requires_grad_(True)
        self._train_token_rows(base)
        if tuning.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False

    def _train_token_rows(self, base: nn.Module) -> None:
        """The head's own tokens (reward_token) train even where the embeddings are frozen: the
        embedding matrix takes gradients, masked to those rows, so every other row keeps its weights."""
        ids = self.head.trainable_token_ids()
        embedding = base.get_input_embeddings().weight
        if not ids or embedding.requires_grad or self._token_row_hook is not None:
            return
        rows = torch.zeros(embedding.shape[0], 1, dtype=embedding.dtype, device=embedding.device)
        rows[ids] = 1
        embedding.requires_grad_(True)
        self._token_row_hook = embedding.register_hook(lambda grad: grad * rows.to(grad.device, grad.dtype))

    def token_row_embedding(self) -> nn.Parameter | None:
        """The input-embedding matrix when only the head's token rows train in it (it then needs an
        optimizer group without weight decay, or the frozen rows would decay); None otherwise."""
        return unwrap_peft(self.backbone).get_input_embeddings().weight if self._token_row_hook is not None else None

    # ------------------------------------------------------------------------------ forward

    @property
    def dimensions(self) -> list[str]:
        return list(self.head.dimensions)

    @property
    def output_dimensions(self) -> list[str]:
        """The reported reward names: the head's dimensions, plus "overall" when it is their sum."""
        return self.dimensions + (["overall"] if self.settings.overall == "sum" else [])

    def _inner(self) -> nn.Module:
        return unwrap_peft(self.backbone).model

    def _position_ids(self, inputs: Mapping[str, torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        if self.settings.positions == "sequential":
            return sequential_positions(attention_mask)
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
        """Final hidden states at the head's read positions: `[N, num_reads, H]` (N = 2P for packed pairs)."""
        inner = self._inner()
        extra = {k: inputs[k] for k in _MODEL_INPUT_KEYS if k in inputs}
        if "segment_ids" in inputs:
            return self._packed_hidden_states(inputs, extra)
        attention_mask = inputs["attention_mask"]
        read = self.head.read_positions(inputs["input_ids"], attention_mask)
        out = inner(
            input_ids=inputs["input_ids"],
            attention_mask=attention_mask,
            position_ids=self._position_ids(inputs, attention_mask),
            use_cache=False,
            **extra,
        )
        hidden = out.last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], read]

    def _packed_hidden_states(self, inputs: Mapping[str, torch.Tensor], extra: dict) -> torch.Tensor:
        if self.head.num_reads != 1 or self.settings.positions != "mrope":
            raise RewardModelError("packed pairs need a head that reads the last token and M-RoPE positions")
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
        return torch.cat([hidden[rows, read[:, 0]], hidden[rows, read[:, 1]]], dim=0)[:, None]

    def _dtype(self) -> torch.dtype:
        return unwrap_peft(self.backbone).get_input_embeddings().weight.dtype

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable rewards `[N, k]` for a processor batch or a packed pair batch."""
        hidden = self.hidden_states(inputs)
        lm_head = unwrap_peft(self.backbone).get_output_embeddings() if self.head.uses_lm_head else None
        return self.head(hidden, lm_head)

    @torch.no_grad()
    def score(self, inputs: Mapping[str, torch.Tensor], normalize: bool = False) -> torch.Tensor:
        """Rewards `[N, k]` without gradients (the caller chooses train/eval mode): `head.to_reward` of
        `forward`, z-normalised in float64 with the checkpoint's statistics when `normalize`."""
        rewards = self.head.to_reward(self.forward(inputs))
        return self.normalize(rewards) if normalize else rewards

    def pair_loss(self, rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                  loss_cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a pair batch's rewards `[2P, k]` (a sides then b sides); the head picks the loss."""
        num_pairs = labels.shape[0]
        if rewards.shape[0] != 2 * num_pairs:
            raise ValueError(f"{rewards.shape[0]} rewards for {num_pairs} pairs (expected {2 * num_pairs})")
        return self.head.pair_loss(rewards[:num_pairs], rewards[num_pairs:], labels, mask, loss_cfg)

    # ------------------------------------------------------------------------------ reported rewards

    def set_reward_stats(self, stats: Mapping[str, Mapping[str, float]]) -> None:
        """Per-dimension {"mean", "std"} used by `normalize` (every dimension; finite, std >= 0)."""
        missing = [d for d in self.dimensions if d not in stats]
        bad = [d for d in self.dimensions if d in stats and not (
            math.isfinite(float(stats[d]["mean"])) and float(stats[d]["std"]) >= 0)]
        if missing or bad:
            raise RewardModelError(f"reward statistics: missing dimensions {missing}, bad values for {bad}: {stats}")
        self.reward_stats = {d: {"mean": float(stats[d]["mean"]), "std": float(stats[d]["std"])}
                             for d in self.dimensions}

    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        """`(r - mean) / std` per dimension, in float64 (VideoAlign normalises Python floats)."""
        if self.reward_stats is None:
            raise RewardModelError("this model has no reward statistics to normalise with "
                                   "(train it with reward statistics on, or score with normalize=False)")
        constant = [d for d in self.dimensions if not self.reward_stats[d]["std"] > 0]
        if constant:
            raise RewardModelError(f"cannot normalise {constant}: the model's rewards had no spread (std 0)")
        mean = torch.tensor([self.reward_stats[d]["mean"] for d in self.dimensions], dtype=torch.float64)
        std = torch.tensor([self.reward_stats[d]["std"] for d in self.dimensions], dtype=torch.float64)
        return (rewards.to(torch.float64) - mean.to(rewards.device)) / std.to(rewards.device)

    def with_overall(self, rewards: torch.Tensor) -> torch.Tensor:
        """Rewards `[N, len(output_dimensions)]`: a summed "overall" column appended when the settings say so."""
        if self.settings.overall == "sum":
            return torch.cat([rewards, rewards.sum(dim=1, keepdim=True)], dim=1)
        return rewards

    # ------------------------------------------------------------------------------ one-call scoring

    def encode(self, prompts: Sequence[str], sides: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Processor inputs that score each (prompt, side) on its own, as this model was trained."""
        return self.head.encode_sides(self.processor, list(prompts), list(sides), self.settings.collate)

    @torch.no_grad()
    def rewards_of(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw rewards `[N, k]` of a processor batch, through the batched evaluation forward when the
        backbone allows it (same values as `score`, fewer per-sequence steps)."""
        from mmreward.forward.batched import batched_rewards, supports_batched_rewards

        param = next(self.parameters())
        inputs = {k: (v.to(param.device, param.dtype) if torch.is_floating_point(v) else v.to(param.device))
                  for k, v in inputs.items()}
        if supports_batched_rewards(self) and "segment_ids" not in inputs:
            return batched_rewards(self, inputs)
        return self.score(inputs)

    def reward_items(self, media: Sequence[Any], prompts: str | Sequence[str], normalize: bool | None = None,
                     batch_size: int = 8) -> list[dict[str, float] | Exception]:
        """Per item, its rewards by name (`output_dimensions`) or the error that kept it from being scored.

        media: image or video paths (videos by suffix, decoded as `settings.media` says), PIL images,
            `VideoClip`s or uint8 frame arrays. prompts: one per item, or one for all.
        normalize: z-normalise with the checkpoint's statistics (default: `settings.normalize`).
        """
        items = list(media)
        texts = [prompts] * len(items) if isinstance(prompts, str) else list(prompts)
        if len(texts) != len(items):
            raise ValueError(f"{len(texts)} prompts for {len(items)} media items")
        normalize = self.settings.normalize if normalize is None else normalize
        results: list[dict[str, float] | Exception] = [{} for _ in items]
        loaded: list[tuple[int, Any]] = []
        final_size = processor_image_size(self.processor)  # images decoded straight to what the model sees
        for i, value in enumerate(items):
            try:
                loaded.append((i, media_side(value, self.settings.media, final_image_size=final_size)))
            except (MediaError, TypeError, ValueError) as err:
                results[i] = err
        names = self.output_dimensions
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            rewards = self.rewards_of(self.encode([texts[i] for i, _ in chunk], [side for _, side in chunk]))
            rewards = self.with_overall(self.normalize(rewards) if normalize else rewards.double())
            for (i, _), row in zip(chunk, rewards.cpu().tolist()):
                results[i] = dict(zip(names, row))
        return results

    def reward(self, media: Sequence[Any], prompts: str | Sequence[str], normalize: bool | None = None,
               batch_size: int = 8) -> list[dict[str, float]]:
        """Rewards of each media item for its prompt, e.g. `[{"VQ": .., "MQ": .., "TA": .., "overall": ..}]`.

        Batches internally (`batch_size` items per forward). Unreadable items raise `RewardInputError`
        (each MediaError names its file) after every other item was scored; the error carries them.
        """
        results = self.reward_items(media, prompts, normalize, batch_size)
        errors = {i: r for i, r in enumerate(results) if isinstance(r, Exception)}
        if errors:
            raise RewardInputError(errors, [None if isinstance(r, Exception) else r for r in results])
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------ checkpoints

    def config_dict(self) -> dict[str, Any]:
        base = unwrap_peft(self.backbone)
        return {
            "format": FORMAT,
            "version": 2,
            "head": self.head.config(),
            "backbone": {
                "path": self.backbone_path,
                "family": base.config.model_type,
                "dtype": str(self._dtype()).removeprefix("torch."),
            },
            "tuning": asdict(self.tuning),
            "scoring": asdict(self.settings),
            "reward_stats": self.reward_stats,
        }

    def _trained_base_names(self) -> list[str]:
        """Names (in `self.backbone`'s state dict) of base weights that train although they are not saved
        as a whole backbone: LoRA / head modes, e.g. the vision tower beside the adapters."""
        if self.tuning.mode == "full":
            return []
        embedding = unwrap_peft(self.backbone).get_input_embeddings().weight
        return [name for name, p in self.backbone.named_parameters()
                if p.requires_grad and "lora_" not in name and p is not embedding]

    def _embedding_name(self) -> str:
        embedding = unwrap_peft(self.backbone).get_input_embeddings().weight
        return next(name for name, p in self.backbone.named_parameters(remove_duplicate=False) if p is embedding)

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
        trained = {name: backbone_state[name].detach().contiguous().cpu() for name in self._trained_base_names()}
        if trained:
            save_file(trained, out / TRAINED_BASE_WEIGHTS, metadata={"format": "pt"})
        ids = self.head.trainable_token_ids()
        if ids:
            rows = backbone_state[self._embedding_name()][ids].detach().contiguous().cpu()
            save_file({"ids": torch.tensor(ids), "weight": rows}, out / TOKEN_EMBEDDINGS, metadata={"format": "pt"})
        if self.processor is not None:
            self.processor.save_pretrained(out)
        (out / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return out

    def _load_saved_base_weights(self, ckpt: Path) -> None:
        """Copy `trained_base.safetensors` and `token_embeddings.safetensors` into the backbone."""
        params = dict(self.backbone.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            if (ckpt / TRAINED_BASE_WEIGHTS).is_file():
                trained = load_file(ckpt / TRAINED_BASE_WEIGHTS)
                unknown = sorted(set(trained) - set(params))
                if unknown:
                    raise RewardModelError(f"{ckpt / TRAINED_BASE_WEIGHTS}: weights {unknown[:3]} are not in "
                                           "the backbone")
                for name, value in trained.items():
                    params[name].copy_(value)
            if (ckpt / TOKEN_EMBEDDINGS).is_file():
                saved = load_file(ckpt / TOKEN_EMBEDDINGS)
                embedding = params[self._embedding_name()]
                embedding[saved["ids"].long()] = saved["weight"].to(embedding.dtype)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, backbone_path: str | Path | None = None,
                        dtype: str = "auto", attn_implementation: str = "sdpa",
                        trainable: bool = False) -> "RewardModel":
        """Load a checkpoint written by `save_pretrained`, or a VideoAlign checkpoint directory
        (`model_config.json` + `checkpoint-N/model.pth`; see `mmreward.videoalign`).

        backbone_path: base backbone for head-only / LoRA checkpoints (default: the recorded path;
            for VideoAlign checkpoints, its `model_name_or_path`).
        trainable: keep the checkpoint's tuning (requires_grad, train mode) instead of freezing
            everything and switching to eval mode.
        """
        ckpt = Path(checkpoint_dir)
        config_path = ckpt / CONFIG_NAME
        if not config_path.is_file():
            from mmreward import videoalign

            if videoalign.is_videoalign_checkpoint(ckpt):
                return videoalign.load_videoalign(ckpt, backbone_path=backbone_path, dtype=dtype,
                                                  attn_implementation=attn_implementation)
            raise RewardModelError(f"{config_path}: missing; {ckpt} is neither a reward model checkpoint nor a "
                                   f"VideoAlign one ({videoalign.CONFIG_NAME} + checkpoint-N/{videoalign.WEIGHTS_NAME})")
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
        if (ckpt / "preprocessor_config.json").is_file() or (ckpt / "processor_config.json").is_file():
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(ckpt))
        head = head_from_config(config["head"])
        head.prepare_backbone(backbone, processor)  # a LoRA / head checkpoint's base lacks the head's tokens
        if tuning.mode == "lora":
            from peft import PeftModel

            require_safetensors(ckpt / ADAPTER_DIR, what="LoRA adapter")  # peft would fall back to a .bin pickle
            backbone = PeftModel.from_pretrained(backbone, str(ckpt / ADAPTER_DIR), is_trainable=trainable)
        weights = ckpt / HEAD_WEIGHTS
        if not weights.is_file():
            raise RewardModelError(f"{weights}: missing")
        try:
            head.load_state_dict(load_file(weights), strict=True)
        except RuntimeError as err:  # missing/unexpected keys or shape mismatches
            raise RewardModelError(f"{weights}: does not match the head config in {config_path} ({err})") from err
        settings = (ScoringSettings(**config["scoring"]) if "scoring" in config  # version 1 had no settings
                    else ScoringSettings.for_dimensions(head.dimensions))
        model = cls(backbone, head, backbone_path=base_path, tuning=tuning, processor=processor, settings=settings,
                    reward_stats=config.get("reward_stats"))
        model._load_saved_base_weights(ckpt)
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
