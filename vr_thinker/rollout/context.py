"""Contexts as token ids: render an environment's messages with the chat template and turn them into ids in which
every earlier assistant turn is the exact generated ids (not a re-tokenisation of its text), each image's and
video's placeholder expanded to its token count.

The text between assistant turns is tokenised on its own; the template must render each assistant turn verbatim at
the place where the prefix ends (checked; it holds for the ChatML templates), so the ids always decode to the
rendered conversation. Every media item carries a key of its content, so comparing two contexts token by token also
compares their images (what the KV-cache reuse of the HF engine relies on).

Media: images (``{"type": "image", "image": PIL}``) and, for presets that show the initial frames as one video,
a video (``{"type": "video", "video": [PIL, ...], "fps": f}``; Qwen2-VL and Qwen2.5-VL only: Qwen3-VL writes
timestamps between video frames, which this builder does not reproduce).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmreward.errors import MmrewardError

Message = dict[str, Any]


class RolloutError(MmrewardError, RuntimeError):
    """The conversation cannot be turned into token ids that extend the generated ones (template, media)."""


@dataclass
class Media:
    """One distinct image or video (by content): preprocessed pixels, grid, token count and, once needed, its
    features. kind: ``image`` or ``video``; frames: the video's frames (one image for an image);
    seconds_per_grid: temporal span of one grid step of a video (Qwen2.5-VL positions), 0 for images."""

    uid: int
    kind: str
    frames: list[Image.Image]
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor  # [3]
    num_tokens: int
    seconds_per_grid: float = 0.0
    features: torch.Tensor | None = None  # [num_tokens, hidden]
    deepstack: list[torch.Tensor] | None = None  # Qwen3-VL: one [num_tokens, hidden] per deepstack layer

    @property
    def image(self) -> Image.Image:
        return self.frames[0]


@dataclass
class Context:
    """Token ids of one rendered context. keys: ids for text, ``-1 - uid`` for the tokens of media ``uid`` (so a
    prefix comparison also compares content); media in token order with the index of their first token."""

    ids: np.ndarray
    keys: np.ndarray
    media: list[Media]
    media_starts: list[int]

    @property
    def images(self) -> list[Media]:
        return [m for m in self.media if m.kind == "image"]

    @property
    def videos(self) -> list[Media]:
        return [m for m in self.media if m.kind == "video"]


def _digest(frames: Sequence[Image.Image], extra: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for frame in frames:
        digest.update(frame.tobytes())
        digest.update(f"{frame.mode}{frame.size}".encode())
    digest.update(extra.encode())
    return digest.digest()


def message_media(messages: Sequence[Message]) -> list[tuple[str, list[Image.Image], float]]:
    """Images and videos in the order the chat template renders them: (kind, frames, fps)."""
    out = []
    for message in messages:
        if message["role"] not in ("user", "tool") or isinstance(message["content"], str):
            continue
        for part in message["content"]:
            if part.get("type") == "video" or "video" in part:
                frames = list(part["video"])
                if not frames or not all(isinstance(f, Image.Image) for f in frames):
                    raise RolloutError("video parts must hold a non-empty list of PIL frames")
                out.append(("video", frames, float(part.get("fps", 2.0))))
            elif part.get("type") == "image" or "image" in part:
                image = part["image"]
                if not isinstance(image, Image.Image):
                    raise RolloutError(f"image parts must hold PIL images, got {type(image).__name__}")
                out.append(("image", [image], 0.0))
    return out


def seconds_per_grid(processor: Any, fps: float) -> float:
    """Temporal span of one video grid step: the processor's temporal patch size over the frame rate."""
    return float(processor.video_processor.temporal_patch_size) / fps


class ConversationBuilder:
    """Renders environment contexts into token ids that keep earlier generated turns as their exact ids."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = getattr(processor, "video_token", "<|video_pad|>")
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(self.video_token)
        self.merge_size = processor.image_processor.merge_size
        self.qwen3 = type(processor).__name__.startswith("Qwen3")
        self.media: dict[bytes, Media] = {}

    def _media(self, kind: str, frames: list[Image.Image], fps: float) -> Media:
        key = _digest(frames, kind + str(fps))
        entry = self.media.get(key)
        if entry is not None:
            return entry
        if kind == "image":
            out = self.processor.image_processor(images=[frames[0].convert("RGB")], return_tensors="pt")
            pixels, grid, span = out["pixel_values"], out["image_grid_thw"][0], 0.0
        else:
            if self.qwen3:
                raise RolloutError("video inputs need a Qwen2-VL or Qwen2.5-VL model (Qwen3-VL interleaves timestamps)")
            clip = np.stack([np.asarray(f.convert("RGB")) for f in frames])
            out = self.processor.video_processor(videos=[clip], return_tensors="pt")
            pixels, grid = out["pixel_values_videos"], out["video_grid_thw"][0]
            span = seconds_per_grid(self.processor, fps)
        entry = Media(len(self.media), kind, frames, pixels, grid, int(grid.prod()) // self.merge_size**2, span)
        self.media[key] = entry
        return entry

    def render(self, messages: Sequence[Message], tools: Sequence[dict], generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            list(messages), tools=list(tools) or None, add_generation_prompt=generation_prompt, tokenize=False
        )

    def build(self, messages: Sequence[Message], tools: Sequence[dict], generated: Sequence[list[int]]) -> Context:
        """Ids of ``messages`` + generation prompt where assistant turn k is ``generated[k]`` verbatim."""
        text = self.render(messages, tools)
        assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if len(assistant_at) != len(generated):
            raise RolloutError(f"{len(assistant_at)} assistant turns in the context but {len(generated)} generated")
        pieces: list[tuple[str, list[int] | None]] = []  # (context text, None) or ("", generated ids)
        pos = 0
        for index, gen in zip(assistant_at, generated):
            start = len(self.render(messages[:index], tools))
            gen_text = self.tokenizer.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if start < pos or not text.startswith(gen_text, start):
                raise RolloutError(
                    f"the chat template does not render assistant message {index} verbatim after the rendered "
                    "prefix; token ids cannot extend the generated ones"
                )
            pieces += [(text[pos:start], None), ("", gen)]
            pos = start + len(gen_text)
        pieces.append((text[pos:], None))

        media = [self._media(kind, frames, fps) for kind, frames, fps in message_media(messages)]
        # Split into text chunks, media slots and generated ids; all chunks go through the tokenizer at once.
        parts: list[str | Media | list[int]] = []
        queue = iter(media)
        placeholders = {self.image_token: "image", self.video_token: "video"}
        for piece, gen in pieces:
            if gen is not None:
                parts.append(gen)
                continue
            for chunk in _split_keep(piece, list(placeholders)):
                if chunk in placeholders:
                    item = next(queue, None)
                    if item is None or item.kind != placeholders[chunk]:
                        raise RolloutError("the rendered context's media placeholders do not match the messages")
                    parts.append(item)
                elif chunk:
                    parts.append(chunk)
        if next(queue, None) is not None:
            raise RolloutError("the messages hold more media than the rendered context has placeholders")
        chunks = [p for p in parts if isinstance(p, str)]
        encoded = iter(self.tokenizer(chunks, add_special_tokens=False)["input_ids"] if chunks else [])
        ids: list[int] = []
        keys: list[int] = []
        starts: list[int] = []
        for part in parts:
            if isinstance(part, Media):
                starts.append(len(ids))
                token = self.image_token_id if part.kind == "image" else self.video_token_id
                ids += [token] * part.num_tokens
                keys += [-1 - part.uid] * part.num_tokens
            else:
                part_ids = next(encoded) if isinstance(part, str) else part
                ids += part_ids
                keys += part_ids
        return Context(np.asarray(ids, dtype=np.int64), np.asarray(keys, dtype=np.int64), media, starts)


def _split_keep(text: str, separators: list[str]) -> list[str]:
    """``text`` split at each separator, the separators kept as their own items."""
    out, pos = [], 0
    while True:
        hits = [(text.find(s, pos), s) for s in separators]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            out.append(text[pos:])
            return out
        index, sep = min(hits)
        out += [text[pos:index], sep]
        pos = index + len(sep)
