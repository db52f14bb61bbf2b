"""A torch Dataset over preference records that loads each record's media when it is indexed, and
`media_side`, one scored side from a file path, an image, a clip or a frame array."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.utils.data
from PIL import Image

from mmreward.data.media import MediaConfig, MediaError, SizeRule, VideoClip
from mmreward.data.records import PreferenceRecord, RecordSet, Side, read_records

__all__ = ["MediaConfig", "VIDEO_SUFFIXES", "SideMedia", "frames_clip", "media_side", "PreferenceExample",
           "PreferenceDataset"]

@dataclass
class SideMedia:
    """Decoded media of one side: ``images`` holds ``image`` (first) then ``images``."""

    images: list[Image.Image] = field(default_factory=list)
    video: VideoClip | None = None
    response: str | None = None


VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")


def frames_clip(frames: np.ndarray, fps: float) -> VideoClip:
    """A `VideoClip` of `[T, H, W, 3]` uint8 frames shown at `fps` (a generator's output video)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video frames must be a [T, H, W, 3] uint8 array, got {frames.dtype} {frames.shape}")
    count = frames.shape[0]
    return VideoClip(frames=frames, timestamps=np.arange(count) / fps, indices=np.arange(count), fps=float(fps),
                     num_frames_total=count)


def media_side(value: Any, media: MediaConfig | None = None, array_fps: float = 8.0,
               final_image_size: SizeRule | None = None) -> SideMedia:
    """A side showing `value`: a PIL image, an `[H, W, 3]` image or `[T, H, W, 3]` video array (shown at
    `array_fps`, used as given), a `VideoClip`, or an image / video file path (videos by suffix,
    decoded as `media` says; images resized once, to `final_image_size` when given, as in
    `PreferenceDataset`)."""
    media = media or MediaConfig()
    if isinstance(value, Image.Image):
        return SideMedia(images=[value.convert("RGB")])
    if isinstance(value, VideoClip):
        return SideMedia(video=value)
    if isinstance(value, np.ndarray):
        if value.ndim == 3:
            return SideMedia(images=[Image.fromarray(value).convert("RGB")])
        return SideMedia(video=frames_clip(value, array_fps))
    if isinstance(value, (str, Path)):
        path = Path(value)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return SideMedia(video=media.video(path))
        return SideMedia(images=[media.image(path, final_image_size)])
    raise TypeError(f"cannot show a {type(value).__name__} as media")


@dataclass
class PreferenceExample:
    """A record with both sides' media decoded."""

    record: PreferenceRecord
    a: SideMedia
    b: SideMedia


class PreferenceDataset(torch.utils.data.Dataset):
    """Records (a JSONL path or a RecordSet) whose media are decoded in ``__getitem__``, not up front.

    media: how images and videos are decoded (`MediaConfig`). final_image_size: the model
    processor's image resize rule (`mmreward.collate.processor_image_size`), so each image is
    resized once, to the size the model sees (see `load_image`). A media failure is re-raised as
    :class:`MediaError` naming the record id and its JSONL file as well as the media path.
    """

    def __init__(self, records: RecordSet | str | Path, media: MediaConfig | None = None,
                 final_image_size: SizeRule | None = None):
        self.records = records if isinstance(records, RecordSet) else read_records(records)
        self.media = media or MediaConfig()
        self.final_image_size = final_image_size

    def __len__(self) -> int:
        return len(self.records)

    def _load_side(self, side: Side, decoded: dict[tuple[str, Path], Any]) -> SideMedia:
        """`side`'s media; a path already in `decoded` (the other side of the pair) is not decoded again."""

        def once(kind: str, path: Path, load: Callable[[Path], Any]) -> Any:
            key = (kind, Path(path))
            if key not in decoded:
                decoded[key] = load(path)
            return decoded[key]

        paths = ([side.image] if side.image is not None else []) + side.images
        images = [once("image", p, lambda p: self.media.image(p, self.final_image_size)) for p in paths]
        video = once("video", side.video, self.media.video) if side.video is not None else None
        return SideMedia(images=images, video=video, response=side.response)

    def __getitem__(self, index: int) -> PreferenceExample:
        record = self.records[index]
        # Both answers of a response pair (VL-RewardBench, Multimodal RewardBench, ...) show the same
        # image or video: it is decoded once and both sides share the result (consumers only read media).
        decoded: dict[tuple[str, Path], Any] = {}
        try:
            return PreferenceExample(record, self._load_side(record.a, decoded), self._load_side(record.b, decoded))
        except MediaError as e:
            raise MediaError(e.path, f"{e.reason} (record {record.id!r} in {self.records.path})") from e
