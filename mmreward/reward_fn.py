"""A RewardModel as a TRL reward function: `fn(prompts, completions, **kwargs) -> list[float]`.

`GRPOTrainer(reward_funcs=[RewardFunction(model)])` calls it with the batch's prompts and
completions (plain strings or chat messages) and every other dataset column as keyword lists;
images come from the `images` (a list per example) or `image` column, videos from `videos` /
`video` (file paths). Each completion is scored as the side of a pair was in training: the prompt
text through the same `CollateConfig`, the media, the completion as the response.

It is a plain callable, not an `nn.Module`: TRL would otherwise treat it as a sequence-classification
model and call it with token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from mmreward.collate import CollateConfig, processor_image_size
from mmreward.data.dataset import SideMedia
from mmreward.data.media import MediaConfig
from mmreward.errors import MmrewardError
from mmreward.model import RewardModel


class RewardFunctionError(MmrewardError, ValueError):
    """Inputs the reward function cannot score (the message names the example index)."""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """The prompt as text: a string as is, or the text parts of the last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    if not users:
        raise RewardFunctionError(f"conversational prompt without a user message: {prompt}")
    return _text_of(users[-1]["content"])


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The completion as text: a string as is, or the content of its assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return "".join(_text_of(m["content"]) for m in completion if m.get("role") == "assistant")


def column(kwargs: dict[str, Any], names: Sequence[str], n: int) -> list[Any]:
    """The first of the dataset columns ``names`` that a reward-function call got (``kwargs``), checked to hold
    ``n`` entries; ``[None] * n`` when none of them was given."""
    for name in names:
        if kwargs.get(name) is not None:
            values = list(kwargs[name])
            if len(values) != n:
                raise RewardFunctionError(f"column {name!r} has {len(values)} entries for {n} completions")
            return values
    return [None] * n


def media_columns(prompts: Sequence[Any], completions: Sequence[Any],
                  kwargs: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Per completion, its images (``images`` or ``image`` column) and video (``videos`` or ``video``), None where
    absent; checks that prompts and completions pair up."""
    n = len(prompts)
    if len(completions) != n:
        raise RewardFunctionError(f"{n} prompts for {len(completions)} completions")
    return column(kwargs, ("images", "image"), n), column(kwargs, ("videos", "video"), n)


class RewardFunction:
    """Score completions with a trained reward model, one float per completion.

    model: the reward model (its processor encodes the inputs).
    dimension: which reward to return, one of `model.output_dimensions` (default: "overall" if
        reported, else the first).
    batch_size: completions per forward pass.
    collate / media: prompt formatting and media decoding (default: the model's own settings, i.e.
        the training run's).
    normalize: z-normalise with the checkpoint's statistics (default: the checkpoint's choice).
    """

    def __init__(self, model: RewardModel, dimension: str | None = None, batch_size: int = 16,
                 collate: CollateConfig | None = None, media: MediaConfig | None = None,
                 normalize: bool | None = None):
        if model.processor is None:
            raise RewardFunctionError("the reward model has no processor; load it with RewardModel.from_pretrained")
        dims = model.output_dimensions
        self.dimension = dimension or ("overall" if "overall" in dims else dims[0])
        if self.dimension not in dims:
            raise RewardFunctionError(f"dimension {self.dimension!r} not among the model's {dims}")
        self.model = model
        self.column = dims.index(self.dimension)
        self.batch_size = batch_size
        self.collate = collate or model.settings.collate
        self.media = media or model.settings.media
        self.normalize = model.settings.normalize if normalize is None else normalize
        self.final_image_size = processor_image_size(model.processor)  # images decoded to what the model sees
        self.__name__ = f"reward_model_{self.dimension}"  # TRL names reward columns after it

    def completion_side(self, completion: Any, images: Any, video: Any) -> SideMedia:
        """A completion as the scored side: its text as the response, with the example's images / video."""
        if images is None:
            images = []
        elif isinstance(images, (Image.Image, str, Path)):
            images = [images]
        loaded = [img.convert("RGB") if isinstance(img, Image.Image) else self.media.image(img, self.final_image_size)
                  for img in images]
        clip = self.media.video(video) if video is not None else None
        return SideMedia(images=loaded, video=clip, response=completion_text(completion))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        images, videos = media_columns(prompts, completions, kwargs)
        n = len(prompts)
        texts = [prompt_text(p) for p in prompts]
        sides = [self.completion_side(c, images[i], videos[i]) for i, c in enumerate(completions)]
        rewards: list[float] = []
        for start in range(0, n, self.batch_size):
            stop = start + self.batch_size
            batch = self.model.head.encode_sides(self.model.processor, texts[start:stop], sides[start:stop],
                                                 self.collate)  # the head's prompt (e.g. yes_token's question)
            raw = self.model.rewards_of(batch)
            reported = self.model.with_overall(self.model.normalize(raw) if self.normalize else raw.double())
            rewards.extend(reported[:, self.column].float().cpu().tolist())
        return rewards
