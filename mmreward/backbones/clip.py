"""open_clip backbones: load a CLIP model with its own transforms, or build a tiny random one offline.

`load_clip` accepts the three ways a user names a CLIP model:

- a built-in open_clip name plus a pretrained tag (`"ViT-bigG-14", "laion2b_s39b_b160k"`; open_clip
  downloads the tag's weights, the only path here that touches the network),
- a built-in name plus a local weights file (`"ViT-bigG-14", "/data/bigG.bin"`), fully offline,
- a local model directory holding `open_clip_config.json` + a weights file (what `build_tiny_clip`
  writes, or a copy of a hub repository), given as the path or as `"local-dir:PATH"`.

The preprocessing transform returned is the model's own inference transform (its resize, crop,
mean and std), never hard-coded OpenAI constants.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from mmreward.errors import MmrewardError

# open_clip looks for these names first inside a local model directory.
TINY_WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
LOCAL_DIR_PREFIX = "local-dir:"

# A tiny ViT image tower + tiny causal text tower. The image size stays at 224 so environments that
# render at "the CLIP input size" produce the same frames as they would for ViT-bigG-14 (also 224).
# The vocabulary must stay 49408: open_clip's SimpleTokenizer (BPE vocab shipped inside the package)
# emits ids up to 49407.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Deliberately not OpenAI's constants, so tests can tell whether a caller reads them from the model.
TINY_PREPROCESS_CFG: dict[str, Any] = {
    "mean": [0.5, 0.45, 0.4],
    "std": [0.25, 0.3, 0.35],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


class CLIPLoadError(MmrewardError, ValueError):
    """A CLIP model name / weights argument that cannot be resolved (the message names it)."""


def _resolve_name(model_name: str | Path) -> tuple[str, Path | None]:
    """Turn a directory path into open_clip's `local-dir:` form; return (open_clip name, local dir)."""
    text = str(model_name)
    if text.startswith(LOCAL_DIR_PREFIX):
        local = Path(text[len(LOCAL_DIR_PREFIX):])
    elif Path(text).is_dir():
        local = Path(text)
    else:
        return text, None
    if not (local / CONFIG_NAME).is_file():
        raise CLIPLoadError(f"{local}: not an open_clip model directory (missing {CONFIG_NAME})")
    return LOCAL_DIR_PREFIX + str(local), local


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix in {".bin", ".pt", ".pth", ".safetensors"}


def check_clip_source(model_name: str | Path, pretrained: str | Path | None = None
                      ) -> tuple[str, Path | None, Path | None]:
    """Check a CLIP model naming (see `load_clip`) without loading anything: the model directory or
    built-in name, and the weights file when `pretrained` is a path. Returns (open_clip name, local
    directory or None, weights file or None); raises `CLIPLoadError` naming what is wrong."""
    import open_clip

    name, local_dir = _resolve_name(model_name)
    weights_file: Path | None = None
    if pretrained is not None:
        pretrained = str(pretrained)
        if Path(pretrained).is_file():
            weights_file = Path(pretrained)
        elif _looks_like_path(pretrained):
            raise CLIPLoadError(f"{pretrained}: CLIP weights file not found")
        elif local_dir is not None:
            raise CLIPLoadError(
                f"{model_name}: a local model directory takes its weights from the directory or from a "
                f"weights file, not from the pretrained tag {pretrained!r}"
            )
    if local_dir is None:
        known = set(open_clip.list_models())
        if name.replace("/", "-") not in known and not name.startswith("hf-hub:"):
            what = "no such model directory, nor" if _looks_like_path(name) else "unknown"
            raise CLIPLoadError(f"{model_name}: {what} open_clip model name (see open_clip.list_models())")
    return name, local_dir, weights_file


def load_clip(
    model_name: str | Path,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Callable, Callable]:
    """Load an open_clip model in eval mode with its inference transform and tokenizer.

    Args:
        model_name: built-in open_clip name (e.g. "ViT-bigG-14"), a local model directory (path or
            "local-dir:PATH"), or "hf-hub:org/repo" (downloads).
        pretrained: None (random weights for a built-in name; the directory's weights for a local
            directory), a pretrained tag (downloads), or a local weights file (.safetensors/.bin/.pt),
            which for a local directory replaces the weights found there.
        device: where the model is placed.

    Returns:
        (model, preprocess, tokenizer): `preprocess` maps a PIL image to a normalised tensor
        [3, S, S]; `tokenizer` maps a list of strings to token ids [N, context_length].
    """
    import open_clip  # deferred: importing open_clip pulls timm and takes seconds

    name, local_dir, weights_file = check_clip_source(model_name, pretrained)
    pretrained = None if pretrained is None else str(pretrained)
    try:
        if local_dir is not None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, device=device, load_weights=weights_file is None
            )
            if weights_file is not None:
                open_clip.load_checkpoint(model, str(weights_file), strict=True)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(weights_file) if weights_file else pretrained, device=device
            )
    except pickle.UnpicklingError as err:  # open_clip reads .bin/.pt weights with torch.load(weights_only=True)
        source = weights_file or local_dir or pretrained
        raise CLIPLoadError(f"{source}: refused a weights pickle that holds more than tensors ({err})") from err
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    return model, preprocess, tokenizer


def create_clip_dir(out_dir: str | Path, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], note: str,
                    seed: int = 0) -> tuple[torch.nn.Module, Path]:
    """Write `open_clip_config.json` for a new model to `out_dir` and build that model with seeded random weights.

    Save the weights (trained or not) with `save_clip_weights`; `load_clip(out_dir)` then loads the directory
    offline like any local open_clip model.
    """
    import open_clip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "note": note}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    return open_clip.create_model(LOCAL_DIR_PREFIX + str(out), load_weights=False), out


def save_clip_weights(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write the model's state dict as `open_clip_model.safetensors` (the name open_clip looks for first)."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage; none do in CLIP, but make them contiguous copies.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(out_dir) / TINY_WEIGHTS_NAME
    save_file(state, str(path))
    return path


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight open_clip model (config + safetensors) to `out_dir`; return it.

    The weights are random: scores from this model carry no meaning beyond exercising the code path.
    `load_clip(out_dir)` loads it offline; the tokenizer is open_clip's SimpleTokenizer, whose BPE
    vocabulary ships inside the open_clip package.
    """
    model, out = create_clip_dir(out_dir, TINY_CLIP_CONFIG, TINY_PREPROCESS_CFG,
                                 "tiny open_clip model with RANDOM weights (built offline by mmreward.backbones.clip)",
                                 seed=seed)
    save_clip_weights(model, out)
    return out


def local_clip_note(model_name: str | Path) -> str | None:
    """The "note" a local model directory's open_clip_config.json carries (what built it, e.g. "RANDOM
    weights" or a stand-in's caveat), or None for hub names and directories without one."""
    try:
        _, local = _resolve_name(model_name)
    except CLIPLoadError:
        return None
    if local is None:
        return None
    return json.loads((local / CONFIG_NAME).read_text()).get("note")


def clip_image_size(model: torch.nn.Module) -> tuple[int, int]:
    """(height, width) of the images the model's visual tower expects."""
    size = getattr(model.visual, "image_size", None)
    if size is None:
        size = model.visual.preprocess_cfg["size"]
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
