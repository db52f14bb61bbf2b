"""Load a Qwen-VL style vision-language model and its processor through the Auto classes.

The same call loads a tiny directory built by `mmreward.backbones.tiny` and a 7B checkpoint; nothing
is downloaded unless the path is a hub id that does not exist locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled

from mmreward.backbones.chat_template import ensure_tool_chat_template
from mmreward.errors import MissingInputError, UsageError

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoRASettings:
    """LoRA adapters (peft) on the language model only; the vision tower never gets adapters."""

    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    # Linear layer names inside the language model's decoder layers that get adapters.
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class VLMLoadConfig:
    """How to load a VLM backbone."""

    path: str  # local model directory, or a hub id (the only case that may download)
    dtype: str = "auto"  # "float32" | "bfloat16" | "float16" | "auto" (the checkpoint's own dtype)
    attn_implementation: str = "sdpa"  # "sdpa" | "eager" | "flash_attention_2" (needs flash-attn) | ...
    device_map: str | dict[str, Any] | None = None  # passed to from_pretrained, e.g. "auto" or {"": 0}
    freeze_vision: bool = False  # vision tower (incl. its patch merger) gets requires_grad=False
    lora: LoRASettings | None = None  # LoRA on the language model; all base weights are then frozen
    gradient_checkpointing: bool = False  # non-reentrant activation checkpointing; disables the KV cache
    trust_remote_code: bool = False  # only for checkpoints that need custom code; off unless asked
    local_files_only: bool | None = None  # None: True for an existing local path, False for a hub id
    tool_chat_template: bool = False  # install the tool-capable template if the shipped one drops tool calls
    processor_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"max_pixels": 448 * 448}


def _resolve_local_files_only(cfg: VLMLoadConfig) -> bool:
    if Path(cfg.path).expanduser().exists():
        return True if cfg.local_files_only is None else cfg.local_files_only
    if not _HUB_ID.match(cfg.path):
        raise MissingInputError(f"model path {cfg.path!r} does not exist and is not a hub id ('org/name')")
    return False if cfg.local_files_only is None else cfg.local_files_only


def check_model_path(path: str, flag: str = "--backbone") -> None:
    """Refuse, before anything loads, a model path that is neither a model directory (with config.json)
    nor a hub id; `flag` names the option in the message."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UsageError(f"{flag} {path}: not a model directory (no config.json in it)")
    elif local.exists():
        raise UsageError(f"{flag} {path}: a file, not a model directory")
    elif not _HUB_ID.match(path):
        raise UsageError(f"{flag} {path}: no such directory, and not a hub id ('org/name')")


def unwrap_peft(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under an optional PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder (`model.model.visual` for Qwen2-VL / Qwen2.5-VL / Qwen3-VL), peft-unwrapped."""
    base = unwrap_peft(model)
    tower = base.get_encoder(modality="image")
    if tower is base or tower is getattr(base, "base_model", None):
        raise ValueError(f"{type(base).__name__} has no recognisable vision tower")
    return tower


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The text decoder stack (`model.model.language_model`: embeddings, layers, final norm; no lm_head)."""
    base = unwrap_peft(model)
    decoder = base.get_decoder()
    if decoder is base or decoder is getattr(base, "base_model", None):
        raise ValueError(f"{type(base).__name__} has no recognisable language model")
    return decoder


def freeze_vision_tower(model: torch.nn.Module) -> None:
    """Stop gradients into the vision tower; other parameters are left as they are."""
    for param in vision_tower(model).parameters():
        param.requires_grad_(False)


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of {type(model).__name__}")


def apply_lora(model: PreTrainedModel, lora: LoRASettings) -> PeftModel:
    """Wrap `model` with LoRA adapters on the language model's `target_modules` only."""
    prefix = _module_name(model, language_model(model))
    # peft matches a string target as a full regex over module names: restrict it to the decoder.
    names = "|".join(re.escape(n) for n in lora.target_modules)
    target = rf"{re.escape(prefix)}\..*\.({names})"
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target)
    return get_peft_model(model, config)


PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def require_safetensors(directory: str | Path, what: str = "model") -> None:
    """Refuse a local checkpoint directory whose weights exist only as pickles (unpickling can run code)."""
    local = Path(directory).expanduser()
    if not local.is_dir() or any(local.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{local}: {what} weights only as pickle files {pickles}; weights are loaded from safetensors only "
            "(convert them, e.g. load once in a trusted session and `save_pretrained(..., safe_serialization=True)`)"
        )


def load_vlm(cfg_or_path: VLMLoadConfig | str | Path) -> tuple[torch.nn.Module, Any]:
    """Load (model, processor) from a directory or hub id; applies freezing, checkpointing and LoRA."""
    cfg = cfg_or_path if isinstance(cfg_or_path, VLMLoadConfig) else VLMLoadConfig(path=str(cfg_or_path))
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype {cfg.dtype!r} not in {sorted(DTYPES)}")
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {cfg.attn_implementation!r} not in {ATTN_IMPLEMENTATIONS}")
    local_only = _resolve_local_files_only(cfg)
    require_safetensors(cfg.path)
    common = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=local_only)
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.path,
        use_safetensors=True,  # never unpickle weights (a hub repo with only .bin files fails here)
        dtype=DTYPES[cfg.dtype],
        attn_implementation=cfg.attn_implementation,
        device_map=cfg.device_map,
        **common,
    )
    if is_deepspeed_zero3_enabled():
        # Loading under ZeRO-3, transformers 5.23 records its whole key-conversion table on the model (a plain load
        # records the renamings that matched), and save_pretrained reverses every entry: the prefix change in it
        # writes `model.model.*`. Without the record it saves the standard names, as after a plain load.
        model._weight_conversions = None
    processor = AutoProcessor.from_pretrained(cfg.path, **common, **cfg.processor_kwargs)
    if cfg.tool_chat_template:
        ensure_tool_chat_template(processor)
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    if cfg.gradient_checkpointing:
        # Non-reentrant: gradients flow even when the inputs (embeddings) do not require grad (LoRA).
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.get_text_config().use_cache = False  # a KV cache is useless while training
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    return model, processor
