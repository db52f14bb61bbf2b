"""Tiny random Qwen-VL models, built offline and saved like a real checkpoint.

`build_tiny_vlm(dir)` writes config, safetensors weights, generation config, a byte-level tokenizer,
image/video processors and the tool-capable chat template, so tests and the demo load them with
`AutoModelForImageTextToText.from_pretrained(dir)` / `AutoProcessor.from_pretrained(dir)`, exactly
as a user loads a 7B checkpoint. Same seed and sizes give identical weights.

Tokenizer: ids 0-255 are the 256 bytes (GPT-2 byte-to-unicode alphabet, id == byte value); then a
few whole-word tokens so the verdict words are single tokens like in the real Qwen vocabulary
(`TOKEN_WORDS`: "yes", " yes", "Yes", " Yes", "no", " no", "No", " No"; `tokenizer.encode(" yes")`
gives one id, distinct from `encode(" no")`); then the Qwen special tokens in `SPECIAL_TOKENS` order.
`len(tokenizer)` is the model's vocab size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.modeling_utils import set_zero3_state

from mmreward.backbones.chat_template import TOOL_CHAT_TEMPLATE

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Words that must be one token each (RewardDance reads the logit of the first token of " yes"/" no").
TOKEN_WORDS: tuple[str, ...] = ("yes", " yes", "Yes", " Yes", "no", " no", "No", " No")

# (token, special). Special tokens are dropped by decode(skip_special_tokens=True); the tool/think
# markers are not, as in the real Qwen tokenizers.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


def build_byte_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE tokenizer with the Qwen pre-tokenizer, a handful of merges and Qwen specials."""
    byte_char = bytes_to_unicode()  # byte value -> printable unicode char
    vocab: dict[str, int] = {byte_char[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> str:
        if left + right not in vocab:
            merges.append((left, right))
            vocab[left + right] = len(vocab)
        return left + right

    for word in TOKEN_WORDS:
        # Merge the bare word left to right ((c0 c1) c2)..., then a leading space onto it: BPE applies
        # merges by rank, so this order is the one that reaches the whole-word token.
        chars = "".join(byte_char[b] for b in word.lstrip(" ").encode("utf-8"))
        merged = chars[0]
        for ch in chars[1:]:
            merged = merge(merged, ch)
        if word.startswith(" "):
            merge(byte_char[ord(" ")], merged)
    for token, _ in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    # Tokens already in the vocab keep their ids; registering them as added tokens makes them atomic.
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    return tokenizer


def _mrope_section(head_dim: int, family: str) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) in the real checkpoints' proportions."""
    half = head_dim // 2
    # Qwen2(.5)-VL 7B: [16, 24, 24] of 64; Qwen3-VL: [24, 20, 20] of 64.
    hw = (half * 3) // 8 if family != "qwen3_vl" else (half * 5) // 16
    if hw < 1 or half - 2 * hw < 1:
        raise ValueError(f"head_dim {head_dim} is too small to split over M-RoPE (t, h, w)")
    return [half - 2 * hw, hw, hw]


def _config(
    family: str,
    tokenizer: Qwen2Tokenizer,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vision_hidden_size: int,
    vision_depth: int,
    vision_heads: int,
):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in SPECIAL_TOKENS}
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(head_dim, family),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if family == "qwen2_vl":
        vision = dict(
            depth=vision_depth,
            embed_dim=vision_hidden_size,
            hidden_size=hidden_size,  # Qwen2-VL names the merger's output size `hidden_size`
            mlp_ratio=2,
            num_heads=vision_heads,
            patch_size=14,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    # Qwen2.5-VL and Qwen3-VL share the vision fields below; each adds its own patch size and extras.
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
    )
    if family == "qwen2_5_vl":
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    if family == "qwen3_vl":
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        text["rope_parameters"]["rope_theta"] = 5_000_000.0
        vision.update(
            patch_size=16,
            num_position_embeddings=64,  # an 8x8 learned grid, interpolated to the image size
            deepstack_visual_indexes=[0],
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


_MODEL_CLASSES = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
}


def _processor(family: str, tokenizer: Qwen2Tokenizer, image_tokens: tuple[int, int], video_tokens: int):
    """Processor whose image sizes map to `image_tokens` = (min, max) merged tokens per image."""
    patch = 16 if family == "qwen3_vl" else 14
    unit = (patch * 2) ** 2  # pixels per merged (2x2 patches) token
    image_size = {"shortest_edge": unit * image_tokens[0], "longest_edge": unit * image_tokens[1]}
    # Videos: at most `video_tokens` merged tokens per frame pair. Frames are used as given (callers
    # sample them, e.g. mmreward.data.media.read_video), hence do_sample_frames=False.
    video_kwargs = dict(do_sample_frames=False, cap_pixels_per_frame=True)
    if family == "qwen3_vl":
        image_processor = Qwen2VLImageProcessor(
            size=image_size, patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        # Qwen3-VL's `size` bounds the whole clip (here: up to 768 frames); `max_video_tokens` caps each frame.
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": unit * 4, "longest_edge": unit * video_tokens * 768},
            max_video_tokens=video_tokens,
            **video_kwargs,
        )
        return Qwen3VLProcessor(image_processor, tokenizer, video_processor, chat_template=TOOL_CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessor(size=image_size)
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": unit * 4, "longest_edge": unit * video_tokens}, max_video_tokens=4096, **video_kwargs
    )
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(image_processor, tokenizer, video_processor, chat_template=TOOL_CHAT_TEMPLATE)


def build_tiny_vlm(
    out_dir: str | Path,
    family: str = "qwen2_5_vl",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    image_tokens: tuple[int, int] = (4, 64),
    video_tokens: int = 16,
) -> Path:
    """Build a random `family` model + processor and save both to `out_dir`; returns the path.

    Sizes: text `hidden_size` (head_dim = hidden_size / num_heads), `num_layers`, attention heads,
    MLP width; vision tower width/depth/heads (its merger outputs `hidden_size`). `image_tokens`:
    min and max merged visual tokens per image (84 px -> 9 tokens, 112 px -> 16 with the defaults);
    `video_tokens`: max tokens per temporal pair of frames. Weights depend only on `seed` and sizes;
    the global torch RNG state is left untouched.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = Path(out_dir)
    tokenizer = build_byte_tokenizer()
    config = _config(
        family, tokenizer, hidden_size, num_layers, num_heads, num_kv_heads,
        intermediate_size, vision_hidden_size, vision_depth, vision_heads,
    )
    # set_zero3_state: under a DeepSpeed ZeRO-3 launch transformers would build the model partitioned, a collective
    # that hangs when (as here) one process builds it.
    with torch.random.fork_rng(devices=[]), set_zero3_state():
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        bos_token_id=config.text_config.bos_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _processor(family, tokenizer, image_tokens, video_tokens).save_pretrained(out)
    return out


TINY_SPEC = "tiny"


def tiny_spec_family(spec: str) -> str | None:
    """The family named by a `tiny[:family]` model spec (default qwen2_5_vl); None for any other spec.

    Stage scripts take such a spec in place of a checkpoint path (tests, demo); an unknown family
    raises ValueError.
    """
    if spec != TINY_SPEC and not spec.startswith(TINY_SPEC + ":"):
        return None
    family = spec.partition(":")[2] or "qwen2_5_vl"
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    return family


def tiny_backbone_once(family: str, out_dir: str | Path, state: Any) -> Path:
    """`out_dir/tiny_backbone`, built by the main process of `state` (an accelerate state or
    Accelerator) unless a finished one is there; every process returns once it exists."""
    target = Path(out_dir) / "tiny_backbone"
    if state.is_main_process and not (target / "config.json").is_file():
        build_tiny_vlm(target, family=family, seed=0)
    state.wait_for_everyone()
    return target
