"""Preference examples -> processor inputs for a VLM reward model.

Each side of a pair becomes one chat: a user turn holding the side's images / video and the prompt
(formatted by `CollateConfig.prompt_template`), then, when the side has a response, an assistant
turn with it. Sides without a response end with the generation prompt, so the read position is the
token just before the model would answer. The processor pads the batch (left or right), and
`last_token_index` finds each sequence's last real token from the attention mask either way.

A pair batch holds 2P sequences, all `a` sides then all `b` sides, so `rewards[:P]` / `rewards[P:]`
are the two sides. Labels are `[P, k]` signs (a=1, b=-1, tie=0) in the model's dimension order with
a mask that is 0 where a record has no label for that dimension. When every pair shares its prompt
and media and differs only in the response, `CollateConfig.pair_form="shared_prefix"` (or "auto")
packs each pair into one sequence (see `mmreward.forward.packed`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.media import VideoClip
from mmreward.data.records import PreferenceRecord, label_to_int
from mmreward.errors import MmrewardError

PAIR_FORMS = ("naive", "shared_prefix", "auto")


class CollateError(MmrewardError, ValueError):
    """A batch that cannot be encoded as asked (the message names the record ids)."""


@dataclass
class CollateConfig:
    """How records are turned into model inputs.

    prompt_template: user text; `{prompt}` is replaced by the record's prompt.
    system_prompt: optional system turn before the user turn.
    padding_side: "right" or "left" (the reward is read at the last real token either way).
    max_length: refuse (CollateError) sequences longer than this; truncating would cut media
        placeholder tokens or the read position. None = no limit.
    pair_form: "naive" (each side its own sequence), "shared_prefix" (one packed sequence per pair;
        every pair must share prompt and media and have responses), or "auto" (shared_prefix when
        the whole batch allows it).
    """

    prompt_template: str = "{prompt}"
    system_prompt: str | None = None
    padding_side: str = "right"
    max_length: int | None = None
    pair_form: str = "naive"

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"CollateConfig.padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.pair_form not in PAIR_FORMS:
            raise ValueError(f"CollateConfig.pair_form must be one of {PAIR_FORMS}, got {self.pair_form!r}")
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"CollateConfig.prompt_template must contain '{{prompt}}': {self.prompt_template!r}")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row of a `[B, T]` 0/1 mask (left or right padding)."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if not mask.any(dim=1).all():
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} of the attention mask have no tokens")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=1).values


def build_messages(prompt: str, side: SideMedia, cfg: CollateConfig) -> list[dict[str, Any]]:
    """Chat messages for one side: media first (images, then the video), then the prompt text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in side.images]
    if side.video is not None:
        content.append({"type": "video"})
    content.append({"type": "text", "text": cfg.prompt_template.format(prompt=prompt)})
    messages: list[dict[str, Any]] = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": cfg.system_prompt}]})
    messages.append({"role": "user", "content": content})
    if side.response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": side.response}]})
    return messages


def processor_media(images: Sequence[Any], clips: Sequence[VideoClip]) -> dict[str, Any]:
    """The processor's media arguments for these images and (pre-sampled) video clips.

    RGB PIL images go as uint8 `[3, H, W]` tensors and clip frames as uint8 `[T, 3, H, W]` views:
    the Qwen-VL image and video processors give the same pixels and grids as for the PIL images /
    `[T, H, W, 3]` arrays (tested) and skip their own per-image conversion. Each clip's timing
    goes along, from which the processor derives the temporal spacing of M-RoPE.
    """
    kwargs: dict[str, Any] = {}
    if images:
        kwargs["images"] = [_image_tensor(img) for img in images]
    if clips:
        kwargs.update(
            videos=[_frames_tensor(clip.frames) for clip in clips],
            video_metadata=[{"fps": clip.fps, "total_num_frames": clip.num_frames_total,
                             "frames_indices": clip.indices.tolist()} for clip in clips],
            do_sample_frames=False,  # already sampled (mmreward.data.media); no resampling
        )
    return kwargs


@dataclass(frozen=True)
class QwenImageSize:
    """The size a Qwen-VL image processor resizes an image to (its `smart_resize`: both sides
    multiples of `factor`, pixels within [min_pixels, max_pixels]); a `SizeRule` for `load_image`,
    so images arrive at that size and the processor's own resize does nothing."""

    factor: int
    min_pixels: int
    max_pixels: int

    def __call__(self, width: int, height: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        new_h, new_w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                                    max_pixels=self.max_pixels)
        return new_w, new_h


def processor_image_size(processor: Any) -> QwenImageSize | None:
    """The image size rule of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor (None for others)."""
    image_processor = getattr(processor, "image_processor", None)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    size = getattr(image_processor, "size", None)
    low, high = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
    if not (patch and merge and low and high) or not callable(getattr(image_processor, "resize", None)):
        return None
    return QwenImageSize(factor=patch * merge, min_pixels=low, max_pixels=high)


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # Frame-pool clips are read-only arrays shared between callers; the processor only reads
        # this view, so torch's warning about non-writable arrays does not apply.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(frames).permute(0, 3, 1, 2)


def _image_tensor(image: Any) -> Any:
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return image  # other modes / array inputs: the processor converts them itself


def encode_sides(
    processor: Any,
    prompts: Sequence[str],
    sides: Sequence[SideMedia],
    cfg: CollateConfig,
    ids: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Processor inputs for `len(sides)` sequences (one per prompt/side), padded per `cfg`."""
    if len(prompts) != len(sides):
        raise ValueError(f"{len(prompts)} prompts for {len(sides)} sides")
    texts: list[str] = []
    images: list[Any] = []
    clips: list[VideoClip] = []
    for prompt, side in zip(prompts, sides):
        add_generation_prompt = side.response is None
        texts.append(
            processor.apply_chat_template(
                build_messages(prompt, side, cfg), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )
        images.extend(side.images)
        if side.video is not None:
            clips.append(side.video)
    batch = processor(text=texts, padding=True, padding_side=cfg.padding_side, return_tensors="pt",
                      **processor_media(images, clips))
    batch = dict(batch)
    if cfg.max_length is not None and batch["input_ids"].shape[1] > cfg.max_length:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        too_long = [(ids[i] if ids else i, n) for i, n in enumerate(lengths) if n > cfg.max_length]
        raise CollateError(f"sequences longer than max_length={cfg.max_length}: {too_long}")
    return batch


def pair_labels(records: Sequence[PreferenceRecord], dimensions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`[P, k]` label signs and a 0/1 mask of which (record, dimension) labels exist."""
    labels = torch.zeros(len(records), len(dimensions), dtype=torch.long)
    mask = torch.zeros(len(records), len(dimensions), dtype=torch.bool)
    for i, record in enumerate(records):
        for j, dim in enumerate(dimensions):
            if dim in record.label:
                labels[i, j] = label_to_int(record.label[dim])
                mask[i, j] = True
    return labels, mask


def shares_prefix(record: PreferenceRecord) -> bool:
    """True when both sides show the same media and both have a response (a response pair)."""
    a, b = record.a, record.b
    return (
        a.response is not None
        and b.response is not None
        and a.media_paths() == b.media_paths()
    )


@dataclass
class PairCollator:
    """`collate(examples) -> {"inputs": ..., "labels": [P, k], "label_mask": [P, k]}` for a DataLoader.

    `inputs` is either a processor batch of 2P sequences (a sides, then b sides) or, for the
    shared-prefix form, a packed batch of P sequences (`mmreward.forward.packed.pack_pairs`).
    """

    processor: Any
    dimensions: Sequence[str]
    cfg: CollateConfig = field(default_factory=CollateConfig)

    def _use_shared_prefix(self, records: Sequence[PreferenceRecord]) -> bool:
        if self.cfg.pair_form == "naive":
            return False
        eligible = [shares_prefix(r) for r in records]
        if self.cfg.pair_form == "shared_prefix" and not all(eligible):
            bad = [r.id for r, ok in zip(records, eligible) if not ok]
            raise CollateError(
                f"pair_form='shared_prefix' needs pairs with the same media and a response on both sides; "
                f"records {bad} are not"
            )
        return all(eligible)

    def __call__(self, examples: Sequence[PreferenceExample]) -> dict[str, Any]:
        if not examples:
            raise CollateError("empty batch")
        records = [ex.record for ex in examples]
        ids = [r.id for r in records]
        prompts = [r.prompt for r in records]
        labels, mask = pair_labels(records, self.dimensions)
        if self._use_shared_prefix(records):
            from mmreward.forward.packed import (
                pack_pairs,  # the packed form lives with its forward
            )

            enc_a = encode_sides(self.processor, prompts, [ex.a for ex in examples], self.cfg, ids)
            enc_b = encode_sides(self.processor, prompts, [ex.b for ex in examples], self.cfg, ids)
            inputs = pack_pairs(enc_a, enc_b, pad_token_id=self.processor.tokenizer.pad_token_id, ids=ids)
        else:
            sides = [ex.a for ex in examples] + [ex.b for ex in examples]
            inputs = encode_sides(self.processor, prompts + prompts, sides, self.cfg, ids + ids)
        return {"inputs": inputs, "labels": labels, "label_mask": mask}
