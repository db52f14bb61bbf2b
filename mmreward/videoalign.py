"""VideoAlign checkpoints (the released KwaiVGI/VideoReward among them) as mmreward reward models.

VideoAlign's training writes, and its `inference.py` reads, a directory

    model_config.json         data_config, training_args, model_config, peft_lora_config and, in released
                              checkpoints, inference_config (VQ_mean, VQ_std, MQ_mean, ...)
    checkpoint-N/model.pth    the whole model's state dict (torch pickle): the Qwen2-VL weights with LoRA
                              adapters unmerged (base_layer / lora_A / lora_B), the embedding matrix resized
                              to the tokenizer with the three added tokens, and `rm_head`

`load_videoalign` turns it into a `RewardModel` with VideoAlign's own inference behaviour: the
`reward_token` head reading `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>` in the
"detailed_special" prompt, positions 0..L-1 on every M-RoPE axis (VideoAlign's forward leaves
`position_ids` unset, and its weights were trained that way), Qwen-VL frame sampling at the
config's fps and max pixels, rewards normalised in float64 with `inference_config`, and
overall = VQ + MQ + TA. The pickle is read with `torch.load(weights_only=True)`: plain tensors only.
LoRA adapters are merged into the weights they adapt (W + alpha / r * B A).

`export_videoalign(model, dir)` writes a compatible model into that layout (LoRA merged, so
`lora_enable` is false), which VideoAlign's inference loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from mmreward.backbones.vlm import DTYPES, unwrap_peft
from mmreward.collate import CollateConfig
from mmreward.data.media import MediaConfig
from mmreward.heads.reward_token import RewardTokenHead
from mmreward.model import RewardModel, RewardModelError, ScoringSettings, TuningConfig

CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.pth"
# What VideoAlign's inference.py reports, in the order its rm_head reads the tokens.
DIMENSIONS = ("VQ", "MQ", "TA")
TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
TEMPLATE = "videoalign_detailed_special"  # VideoAlign's prompt_template_type "detailed_special"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_videoalign_checkpoint(directory: str | Path) -> bool:
    """A directory with VideoAlign's `model_config.json` (its four config sections)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and {"data_config", "model_config", "peft_lora_config"} <= set(config)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RewardModelError(f"{path}: not valid JSON ({err})") from err
    model, data = config["model_config"], config["data_config"]
    problems = []
    if not model.get("use_special_tokens") or model.get("reward_token") != "special":
        problems.append(f"reward_token={model.get('reward_token')!r}, "
                        f"use_special_tokens={model.get('use_special_tokens')}"
                        " (only the special-token design of the released VideoReward is supported)")
    if model.get("output_dim") not in (1, len(TOKENS)):
        problems.append(f"output_dim={model.get('output_dim')} (1 or 3 outputs per reward token)")
    if data.get("prompt_template_type") != "detailed_special":
        problems.append(f"prompt_template_type={data.get('prompt_template_type')!r} (the reward tokens are in "
                        "'detailed_special' only)")
    if data.get("sample_type", "uniform") != "uniform":
        problems.append(f"sample_type={data.get('sample_type')!r} (only 'uniform' frame sampling)")
    if problems:
        raise RewardModelError(f"{path}: unsupported VideoAlign settings: " + "; ".join(problems))
    return config


def checkpoint_weights(directory: str | Path, step: int | None = None) -> Path:
    """`checkpoint-N/model.pth`: the given step or, like VideoAlign's loader, the highest N."""
    directory = Path(directory)
    steps = {int(m.group(1)): p for p in directory.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))}
    if not steps:
        raise RewardModelError(f"{directory}: no checkpoint-N folder")
    if step is not None and step not in steps:
        raise RewardModelError(f"{directory}: no checkpoint-{step} (have {sorted(steps)})")
    weights = steps[step if step is not None else max(steps)] / WEIGHTS_NAME
    if not weights.is_file():
        others = sorted(p.name for p in weights.parent.iterdir())
        raise RewardModelError(f"{weights}: missing (the folder holds {others}; only the full-state-dict layout "
                               f"with {WEIGHTS_NAME} is read)")
    return weights


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The state dict in `weights`, read as plain tensors only (`weights_only=True`)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError for foreign globals, RuntimeError / EOFError for damaged files
        raise RewardModelError(f"{weights}: refused to load (not a plain tensor state dict: "
                               f"{type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RewardModelError(f"{weights}: holds {type(state).__name__}, not a state dict of tensors "
                               "(VideoAlign's save_full_model writes None when run without DeepSpeed)")
    return state


def _hf_name(name: str) -> str:
    """A Qwen2-VL weight name of transformers < 4.52 (`visual.*`, `model.layers.*`) in today's layout."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + name[len("model."):]
    return name


def merge_lora(state: Mapping[str, torch.Tensor], lora: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict without its PEFT wrapping: every adapted weight becomes W + scale * B @ A
    (scale = alpha / r, or alpha / sqrt(r) with rsLoRA), names as in the unwrapped model."""
    prefix = "base_model.model."
    plain = {k.removeprefix(prefix): v for k, v in state.items()}
    unsupported = sorted(k for k in plain if "lora_embedding_" in k or "modules_to_save" in k or "original_module" in k)
    if unsupported:
        raise RewardModelError(f"LoRA on embeddings and modules_to_save are not supported: {unsupported[:3]}")
    rank, alpha = int(lora["lora_r"]), float(lora["lora_alpha"])
    scale = alpha / (rank ** 0.5 if lora.get("use_rslora") else rank)
    out: dict[str, torch.Tensor] = {}
    for name, value in plain.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." in name:
            module, leaf = name.split(".base_layer.")
            name = f"{module}.{leaf}"
            if leaf == "weight":
                down = plain[f"{module}.lora_A.default.weight"].double()
                up = plain[f"{module}.lora_B.default.weight"].double()
                value = (value.double() + scale * (up @ down)).to(value.dtype)
        out[name] = value
    return out


def _stats(inference: Mapping[str, float] | None) -> dict[str, dict[str, float]] | None:
    if inference is None:
        return None
    return {d: {"mean": float(inference[f"{d}_mean"]), "std": float(inference[f"{d}_std"])} for d in DIMENSIONS}


def _base_path(config: Mapping[str, Any], backbone_path: str | Path | None, where: Path) -> str:
    base = str(backbone_path or config["model_config"]["model_name_or_path"])
    if not Path(base).expanduser().is_dir():
        # The checkpoint names its base (usually the hub id Qwen/Qwen2-VL-2B-Instruct); its config and processor
        # are read from there, from the local Hugging Face cache only: nothing is downloaded.
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(base, "config.json"), str):
            raise RewardModelError(
                f"{where / CONFIG_NAME}: its base model {base!r} is neither a local directory nor in the local "
                "Hugging Face cache; pass backbone_path=/path/to/Qwen2-VL-2B-Instruct (config and processor are read "
                "from it, the weights come from the checkpoint)")
    return base


def load_videoalign(directory: str | Path, backbone_path: str | Path | None = None, dtype: str = "auto",
                    attn_implementation: str = "sdpa", step: int | None = None) -> RewardModel:
    """A VideoAlign checkpoint directory as a `RewardModel` (module docstring), in eval mode.

    backbone_path: the base model (config and processor) if `model_name_or_path` is not local.
    dtype: "auto" keeps the checkpoint's `torch_dtype` (VideoAlign runs bf16); "float32" for exact work.
    step: which `checkpoint-N` (default: the highest).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    config = _read_config(directory)
    state = read_state_dict(checkpoint_weights(directory, step))
    lora = config["peft_lora_config"]
    plain = merge_lora(state, lora) if lora.get("lora_enable") else dict(state)
    rm_head = plain.pop("rm_head.weight", None)
    if rm_head is None:
        raise RewardModelError(f"{directory}: the state dict has no rm_head.weight")
    weights = {_hf_name(k): v for k, v in plain.items()}
    base = _base_path(config, backbone_path, directory)
    local_only = {"local_files_only": True}
    processor = AutoProcessor.from_pretrained(base, padding_side="right", **local_only)
    # VideoAlign's transformers sent video frames through the image processor: no bound on a clip's total pixels.
    processor.video_processor.cap_pixels_per_frame = False
    model_config = AutoConfig.from_pretrained(base, **local_only)
    vocab = weights["model.language_model.embed_tokens.weight"].shape[0]
    model_config.get_text_config().vocab_size = vocab  # VideoAlign resized the embeddings to its tokenizer
    torch_dtype = config["model_config"].get("torch_dtype") or "float32"
    target = DTYPES[torch_dtype if dtype == "auto" else dtype]
    with no_init_weights():  # every weight comes from the checkpoint
        backbone = AutoModelForImageTextToText.from_config(model_config, dtype=target,
                                                           attn_implementation=attn_implementation)
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    tied = getattr(model_config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RewardModelError(f"{directory}: the state dict does not fit {model_config.model_type} from {base}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    head = RewardTokenHead(model_config.get_text_config().hidden_size, DIMENSIONS, tokens=TOKENS, template=TEMPLATE,
                           shared_weights=rm_head.shape[0] == 1)
    head.prepare_backbone(backbone, processor)  # adds the tokens in VideoAlign's order, so the ids match
    if len(processor.tokenizer) != vocab:
        raise RewardModelError(f"{directory}: the checkpoint's embeddings have {vocab} rows, but the base tokenizer "
                               f"of {base} with the three reward tokens has {len(processor.tokenizer)}")
    with torch.no_grad():
        head.proj.weight.copy_(rm_head.float())
    data = config["data_config"]
    settings = ScoringSettings(
        positions="sequential", overall="sum", normalize=config.get("inference_config") is not None,
        collate=CollateConfig(padding_side="right"),
        media=MediaConfig(num_frames=data.get("num_frames"), fps=data.get("fps"), video_sampling="qwen",
                          video_max_pixels=data.get("max_frame_pixels")),
    )
    model = RewardModel(backbone, head, backbone_path=base, tuning=TuningConfig(mode="full"), processor=processor,
                        settings=settings, reward_stats=_stats(config.get("inference_config")))
    model.requires_grad_(False)
    return model.eval()


def _legacy_name(name: str) -> str:
    """Today's Qwen2-VL weight name in transformers 4.45's layout (what VideoAlign's code loads)."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def export_videoalign(model: RewardModel, out_dir: str | Path, step: int = 0) -> Path:
    """Write `model` in VideoAlign's checkpoint layout (module docstring); returns the directory.

    The model must be what VideoAlign's inference computes: a Qwen2-VL backbone, the reward_token
    head with VideoAlign's tokens and prompt, sequential positions and Qwen-VL frame sampling.
    `model_name_or_path` is the model's base backbone path (VideoAlign's inference reads its config
    and processor there).
    """
    base = unwrap_peft(model.backbone)
    head, settings = model.head, model.settings
    problems = []
    if base.config.model_type != "qwen2_vl":
        problems.append(f"backbone {base.config.model_type} (VideoAlign builds Qwen2-VL)")
    if not isinstance(head, RewardTokenHead) or tuple(head.tokens) != TOKENS or head.template != TEMPLATE:
        problems.append(f"head {head.name} (needs reward_token with tokens {TOKENS} and template {TEMPLATE!r})")
    if settings.positions != "sequential" or settings.overall != "sum":
        problems.append(f"positions={settings.positions!r}, overall={settings.overall!r} (needs sequential, sum)")
    collate = settings.collate
    if settings.media.video_sampling != "qwen" or collate.system_prompt or collate.prompt_template != "{prompt}":
        problems.append("media / prompt settings other than Qwen-VL frame sampling and a plain prompt")
    if model.backbone_path is None:
        problems.append("no base backbone path to record")
    if problems:
        raise RewardModelError("export_videoalign: VideoAlign's inference would not reproduce this model: "
                               + "; ".join(problems))
    vocab = len(model.processor.tokenizer)
    state = {}
    for name, value in base.state_dict().items():
        value = value.detach().cpu().clone()
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            value = value[:vocab]  # VideoAlign resizes the embeddings to the tokenizer's length
        state[_legacy_name(name)] = value
    state["rm_head.weight"] = head.proj.weight.detach().cpu().clone().to(next(iter(state.values())).dtype)
    media = settings.media
    stats = model.reward_stats
    config = {
        "data_config": {
            "meta_data": None, "data_dir": None, "meta_data_test": None,
            "max_frame_pixels": media.video_max_pixels or 768 * 28 * 28,
            "num_frames": media.num_frames if media.fps is None else None,
            "fps": media.fps if media.fps is not None else (2.0 if media.num_frames is None else None),
            "p_shuffle_frames": 0.0, "p_color_jitter": 0.0, "eval_dim": list(DIMENSIONS),
            "prompt_template_type": "detailed_special", "add_noise": False, "sample_type": "uniform",
            "use_tied_data": True,
        },
        "training_args": {"exported_by": "mmreward.videoalign.export_videoalign"},
        "model_config": {
            "model_name_or_path": model.backbone_path, "model_revision": "main",
            "output_dim": 1 if head.shared_weights else len(TOKENS), "use_special_tokens": True,
            "freeze_vision_tower": False, "freeze_llm": False, "tune_merger": True,
            "torch_dtype": str(model._dtype()).removeprefix("torch."), "trust_remote_code": False,
            "attn_implementation": None, "load_in_8bit": False, "load_in_4bit": False, "bnb_4bit_quant_type": "nf4",
            "use_bnb_nested_quant": False, "reward_token": "special", "loss_type": "btt",
        },
        "peft_lora_config": {
            "lora_enable": False, "vision_lora": False, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "lora_target_modules": None, "lora_namespan_exclude": None, "lora_modules_to_save": None,
            "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1,
        },
    }
    if stats is not None:
        config["inference_config"] = {f"{d}_{k}": stats[d][k] for d in DIMENSIONS for k in ("mean", "std")}
    out = Path(out_dir)
    (out / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"checkpoint-{step}" / WEIGHTS_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=4) + "\n")
    return out
