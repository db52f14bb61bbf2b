"""Scorers: what the evaluation runner asks of anything that judges a preference pair.

A scorer turns a batch of pairs into one `delta` per dimension, `delta = score_a - score_b`
(positive: a is preferred), the convention of `mmreward.metrics`. Three kinds plug in:

- `RewardModelScorer`: a `RewardModel` scores each side; `delta` is the difference per dimension.
- `JudgeScorer`: a pairwise judge (e.g. VR-Thinker) answers 1 / 2 / 0 per dimension; `delta` is
  +1 / -1 / 0. The judge itself lives outside the library (see `PairJudge`).
- `ClipScorer`: the zero-shot baseline; each side's score is the cosine similarity between the
  prompt's CLIP text embedding and its images / sampled video frames (mean over frames).

The runner drives a scorer in four steps so it can order, prefetch and isolate failures:
`costs(records)` (sort keys for length bucketing; `cost` for one record), `prepare(record)` (per pair; decodes media),
`collate(prepared items)` (per batch; e.g. the processor's tensors) and `score(collated)` (one
batch through the model). `prepare` and `collate` may run in DataLoader workers, so on a GPU the
CPU work of the next batches overlaps the model's. A problem that belongs to one pair (unreadable
media, a sequence over the length limit, a side the scorer cannot read) raises one of
`RECOVERABLE_ERRORS`; the runner records it for that pair and carries on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mmreward.data.media import MediaConfig, MediaError, SizeRule
from mmreward.data.records import PreferenceRecord, RecordError, RecordSet, Side
from mmreward.errors import MmrewardError

__all__ = [
    "SampleError",
    "RECOVERABLE_ERRORS",
    "PairScore",
    "Scorer",
    "BaseScorer",
    "MediaConfig",
    "load_pair_media",
    "RewardModelScorer",
    "JudgeVerdict",
    "PairJudge",
    "JudgeScorer",
    "verdict_to_delta",
    "ClipScorer",
    "swap_record",
]


class SampleError(MmrewardError, ValueError):
    """A pair this scorer cannot score (the message names the record); recorded, not fatal."""


# Errors that belong to one pair: the runner records them in the prediction row and goes on.
RECOVERABLE_ERRORS: tuple[type[Exception], ...] = (MediaError, RecordError, SampleError)


@dataclass
class PairScore:
    """The scores of one pair.

    delta: dimension -> score_a - score_b (a judge's verdict as +1 / -1 / 0). Always has "overall".
    score_a / score_b: each side's own score per dimension (None for judges, which only compare).
    extra: JSON-serialisable details kept in the prediction row (e.g. a judge's trace).
    """

    delta: dict[str, float]
    score_a: dict[str, float] | None = None
    score_b: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    """What the runner needs. `name` and `describe()` identify the scorer in run configs."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def cost(self, record: PreferenceRecord) -> float: ...

    def costs(self, records: Sequence[PreferenceRecord]) -> list[float]: ...

    def prepare(self, record: PreferenceRecord) -> Any: ...

    def collate(self, items: Sequence[Any]) -> Any: ...

    def score(self, batch: Any) -> list[PairScore]: ...


class BaseScorer:
    """Defaults: no cost estimate (dataset order is kept), the record itself as prepared item and
    the list of prepared items as the batch `score` takes."""

    name = "scorer"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def cost(self, record: PreferenceRecord) -> float:
        return 0.0

    def costs(self, records: Sequence[PreferenceRecord]) -> list[float]:
        """`cost` of each record (scorers override this where a batch is cheaper)."""
        return [self.cost(record) for record in records]

    def prepare(self, record: PreferenceRecord) -> Any:
        return record

    def collate(self, items: Sequence[Any]) -> Any:
        return list(items)

    def score(self, batch: Any) -> list[PairScore]:
        raise NotImplementedError


def swap_record(record: PreferenceRecord) -> PreferenceRecord:
    """The same pair shown in the other order: sides swapped, labels flipped (a <-> b)."""
    flip = {"a": "b", "b": "a", "tie": "tie"}
    return PreferenceRecord(
        id=record.id, prompt=record.prompt, a=record.b, b=record.a,
        label={dim: flip[value] for dim, value in record.label.items()}, meta=record.meta,
    )


def load_pair_media(record: PreferenceRecord, media: MediaConfig, final_image_size: SizeRule | None = None):
    """Both sides' media decoded as a `PreferenceExample` (MediaError names the record).

    final_image_size: the model processor's image resize rule (`mmreward.collate.processor_image_size`),
    so each image is resized once, to the size the model sees."""
    from mmreward.data.dataset import (
        PreferenceDataset,  # torch import deferred until media are needed
    )

    dataset = PreferenceDataset(RecordSet([record]), media, final_image_size)
    return dataset[0]


@lru_cache(maxsize=1 << 16)  # benchmarks reuse each media file in many pairs
def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; (0, 0) when unreadable (the decode step reports it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return 0, 0


@lru_cache(maxsize=1 << 16)
def _video_header(path: Path) -> tuple[float, int, int, int]:
    """(seconds, frames, width, height) from the container header; zeros when unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
            return seconds, int(stream.frames), int(stream.width), int(stream.height)
    except (OSError, ValueError, IndexError, av.error.FFmpegError):
        return 0.0, 0, 0, 0


def _video_shape(path: Path, media: MediaConfig) -> tuple[int, int, int]:
    """(sampled frames, width, height) as `media` would sample the video."""
    seconds, total, width, height = _video_header(path)
    if media.fps is not None:
        frames = max(1, int(seconds * media.fps))
    else:
        frames = media.num_frames or total
    return frames, width, height


# ------------------------------------------------------------------------------------ reward model


class RewardModelScorer(BaseScorer):
    """Scores each side with a `RewardModel`; `delta[dim] = reward_a[dim] - reward_b[dim]`.

    Rewards are `RewardModel.score`'s: a head's values (a scalar or reward-token head's, or P("yes")
    for a yes_token head; pairwise form: side a's score is P(yes) to "is a better than b?"),
    z-normalised when `normalize`, plus a summed "overall" when the model reports one.

    model: a loaded `mmreward.model.RewardModel` (eval mode); its `processor` encodes inputs.
    collate / media: chat layout and decoding (default: the model's own, `model.settings`).
    normalize: z-normalise with the checkpoint's statistics (default: the checkpoint's choice).
    overall: "overall" for a model without that dimension: None = the model's own ("sum" of its
        dimensions), or the name of one of its dimensions.
    Inputs go to the model's device.
    """

    name = "reward_model"

    def __init__(self, model: Any, collate: Any | None = None, media: MediaConfig | None = None,
                 normalize: bool | None = None, overall: str | None = None, source: str | None = None):
        self.model = model
        self.media = media or model.settings.media
        self.collate_cfg = collate or model.settings.collate
        if model.processor is None:
            raise ValueError("RewardModelScorer: the model has no processor to encode inputs")
        from mmreward.evaluation.tensor_processor import TensorProcessor

        # The head decides how pairs are encoded (yes_token asks its question about each side); the
        # wrapper gives the processor's own outputs with less per-sequence Python work.
        self.collator = model.head.pair_collator(TensorProcessor(model.processor), self.collate_cfg)
        self.dimensions = list(model.output_dimensions)
        if overall is not None and overall not in model.dimensions:
            raise ValueError(f"overall={overall!r}: expected one of the model's dimensions {model.dimensions}")
        if overall is not None and "overall" in model.dimensions:
            raise ValueError("overall=...: the model has a learned 'overall' dimension already")
        self.overall = overall
        self.normalize = model.settings.normalize if normalize is None else normalize
        if self.normalize and model.reward_stats is None:
            raise ValueError("normalize=True: the model has no reward statistics (its checkpoint stores none)")
        self.source = source
        processor = model.processor
        image_processor = getattr(processor, "image_processor", None)
        # Visual tokens per pixel: one merged token covers (patch * merge)^2 pixels in Qwen-VL.
        patch = getattr(image_processor, "patch_size", 14) or 14
        merge = getattr(image_processor, "merge_size", 2) or 2
        self._pixels_per_token = float((patch * merge) ** 2)
        from mmreward.collate import processor_image_size

        self._final_image_size = processor_image_size(processor)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, dtype: str = "auto", device: str | None = None,
                        **kwargs: Any) -> "RewardModelScorer":
        """Load a `RewardModel` checkpoint directory (eval mode) and wrap it."""
        from mmreward.model import RewardModel

        model = RewardModel.from_pretrained(checkpoint_dir, dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, source=str(checkpoint_dir), **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "dimensions": self.dimensions,
                "overall": self.overall or self.model.settings.overall, "normalize": self.normalize,
                "positions": self.model.settings.positions, "media": asdict(self.media),
                "collate": asdict(self.collate_cfg)}

    def cost(self, record: PreferenceRecord) -> float:
        """Estimated tokens of the longer side: text tokens plus visual tokens from media headers."""
        return self.costs([record])[0]

    def costs(self, records: Sequence[PreferenceRecord]) -> list[float]:
        """`cost` of every record, the texts tokenized in one batch call (a fifth of the time)."""
        sides = [side for record in records for side in (record.a, record.b)]
        texts = [self.collate_cfg.prompt_template.format(prompt=record.prompt) + (side.response or "")
                 for record in records for side in (record.a, record.b)]
        if not texts:
            return []
        token_counts = [len(ids) for ids in self.model.processor.tokenizer(texts)["input_ids"]]
        tokens = [float(n) + self._visual_tokens(side) for n, side in zip(token_counts, sides)]
        return [max(tokens[2 * i], tokens[2 * i + 1]) for i in range(len(records))]

    def _visual_tokens(self, side: Side) -> float:
        tokens = 0.0
        for path in ([side.image] if side.image is not None else []) + side.images:
            w, h = _image_size(path)
            pixels = w * h if self.media.max_pixels is None else min(w * h, self.media.max_pixels)
            tokens += pixels / self._pixels_per_token
        if side.video is not None:
            frames, w, h = _video_shape(side.video, self.media)
            tokens += frames * w * h / self._pixels_per_token / 2  # two frames per temporal patch
        return tokens

    def prepare(self, record: PreferenceRecord) -> Any:
        return load_pair_media(record, self.media, self._final_image_size)

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """The processor's tensors for the batch (`collate.PairCollator` layout: a sides, then b sides)."""
        from mmreward.collate import CollateError
        from mmreward.forward.packed import PackError

        try:
            return self.collator(list(items))
        except (CollateError, PackError) as err:
            raise SampleError(str(err)) from err

    def score(self, batch: dict[str, Any]) -> list[PairScore]:
        import torch

        with torch.inference_mode():
            rewards = self.model.rewards_of(batch["inputs"])  # the batched forward where the backbone allows
        rewards = self.model.normalize(rewards) if self.normalize else rewards.double()
        rewards = self.model.with_overall(rewards).cpu()
        n = len(batch["labels"])
        out = []
        for i in range(n):
            a = dict(zip(self.dimensions, rewards[i].tolist()))
            b = dict(zip(self.dimensions, rewards[n + i].tolist()))
            if self.overall is not None:
                a["overall"], b["overall"] = a[self.overall], b[self.overall]
            out.append(PairScore(delta={d: a[d] - b[d] for d in a}, score_a=a, score_b=b))
        return out


# ------------------------------------------------------------------------------------ judges


@dataclass
class JudgeVerdict:
    """A pairwise judge's answer for one pair.

    verdicts: dimension -> 1 (first candidate better), 2 (second better), 0 (tie), or None when
        the judge gave no parsable answer for that dimension (scored as delta 0 and counted).
    trace: JSON-serialisable record of how the judge got there (kept in the prediction row).
    """

    verdicts: dict[str, int | None]
    trace: Any = None


class PairJudge(Protocol):
    """A generative pairwise judge as the library sees it; adapters live outside `mmreward`."""

    def judge(self, records: Sequence[PreferenceRecord]) -> list[JudgeVerdict]: ...


_VERDICT_DELTA = {1: 1.0, 2: -1.0, 0: 0.0}


def verdict_to_delta(verdict: int | None) -> float:
    """1 -> +1 (a better), 2 -> -1 (b better), 0 -> 0 (tie); None (no answer) -> 0."""
    if verdict is None:
        return 0.0
    if verdict not in _VERDICT_DELTA:
        raise ValueError(f"verdict must be 1, 2, 0 or None, got {verdict!r}")
    return _VERDICT_DELTA[verdict]


class JudgeScorer(BaseScorer):
    """Scores pairs with a `PairJudge`; the judge loads its own media from the record's paths.

    A verdict of None (no parsable answer) counts as delta 0, i.e. wrong without ties; the row's
    `extra.unanswered` lists those dimensions so the report can count them.
    """

    def __init__(self, judge: PairJudge, name: str = "judge", keep_trace: bool = True,
                 source: str | None = None):
        self.judge = judge
        self.name = name
        self.keep_trace = keep_trace
        self.source = source

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "judge": type(self.judge).__name__}

    def cost(self, record: PreferenceRecord) -> float:
        return float(len(record.a.media_paths()) + len(record.b.media_paths()))

    def score(self, items: Sequence[PreferenceRecord]) -> list[PairScore]:
        results = self.judge.judge(list(items))
        if len(results) != len(items):
            raise RuntimeError(f"judge {type(self.judge).__name__} returned {len(results)} verdicts for {len(items)} pairs")
        out = []
        for record, result in zip(items, results):
            if "overall" not in result.verdicts:
                raise SampleError(f"record {record.id!r}: the judge gave no 'overall' verdict ({result.verdicts})")
            delta = {dim: verdict_to_delta(v) for dim, v in result.verdicts.items()}
            extra: dict[str, Any] = {"verdicts": dict(result.verdicts)}
            unanswered = sorted(dim for dim, v in result.verdicts.items() if v is None)
            if unanswered:
                extra["unanswered"] = unanswered
            if self.keep_trace and result.trace is not None:
                extra["trace"] = result.trace
            out.append(PairScore(delta=delta, extra=extra))
        return out


# ------------------------------------------------------------------------------------ CLIP


@dataclass
class _ClipItem:
    record: PreferenceRecord
    pixels_a: Any  # [n_a, 3, S, S] preprocessed frames / images
    pixels_b: Any


class ClipScorer(BaseScorer):
    """CLIP baseline: side score = mean over its images / frames of cos(image, prompt).

    model / preprocess / tokenizer: as returned by `mmreward.backbones.clip.load_clip`.
    dimensions: the label dimensions the one similarity score is reported under ("overall" is
        always one of them); CLIP measures text alignment, so e.g. ("overall", "TA").
    """

    name = "clip"

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, media: MediaConfig | None = None,
                 dimensions: Sequence[str] = ("overall",), device: Any = "cpu", source: str | None = None):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.media = media or MediaConfig()
        self.dimensions = list(dict.fromkeys(["overall", *dimensions]))
        self.device = device
        self.source = source

    @classmethod
    def from_pretrained(cls, model_name: str | Path, pretrained: str | Path | None = None,
                        device: str = "cpu", **kwargs: Any) -> "ClipScorer":
        from mmreward.backbones.clip import load_clip

        model, preprocess, tokenizer = load_clip(model_name, pretrained, device=device)
        return cls(model, preprocess, tokenizer, device=device, source=str(model_name), **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "dimensions": self.dimensions,
                "media": asdict(self.media)}

    def cost(self, record: PreferenceRecord) -> float:
        frames = 0
        for side in (record.a, record.b):
            frames += len(side.images) + (side.image is not None)
            if side.video is not None:
                frames += self.media.num_frames or 1
        return float(frames)

    def _pixels(self, record: PreferenceRecord, media: Any, side_name: str) -> Any:
        import torch
        from PIL import Image

        images = list(media.images)
        if media.video is not None:
            images += [Image.fromarray(frame) for frame in media.video.frames]
        if not images:
            raise SampleError(f"record {record.id!r}: side {side_name!r} has no image or video for CLIP to score")
        return torch.stack([self.preprocess(img) for img in images])

    def prepare(self, record: PreferenceRecord) -> _ClipItem:
        example = load_pair_media(record, self.media)
        return _ClipItem(record, self._pixels(record, example.a, "a"), self._pixels(record, example.b, "b"))

    def score(self, items: Sequence[_ClipItem]) -> list[PairScore]:
        import torch

        prompts = list(dict.fromkeys(item.record.prompt for item in items))
        with torch.no_grad():
            text = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
            pixels = torch.cat([p for item in items for p in (item.pixels_a, item.pixels_b)])
            images = self.model.encode_image(pixels.to(self.device), normalize=True)
        text_of = {p: text[i] for i, p in enumerate(prompts)}
        out, start = [], 0
        for item in items:
            sims = []
            for pixels_side in (item.pixels_a, item.pixels_b):
                emb = images[start:start + len(pixels_side)]
                start += len(pixels_side)
                sims.append(float((emb @ text_of[item.record.prompt]).mean()))
            a = {dim: sims[0] for dim in self.dimensions}
            b = {dim: sims[1] for dim in self.dimensions}
            out.append(PairScore(delta={dim: sims[0] - sims[1] for dim in self.dimensions}, score_a=a, score_b=b))
        return out
