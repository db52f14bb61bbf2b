"""A torch Dataset over preference records that loads each record's media when it is indexed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.utils.data
from PIL import Image

from mmreward.data.media import MediaError, SizeRule, VideoClip, load_image, read_video
from mmreward.data.records import PreferenceRecord, RecordSet, Side, read_records

__all__ = ["SideMedia", "PreferenceExample", "PreferenceDataset"]


@dataclass
class SideMedia:
    """Decoded media of one side: ``images`` holds ``image`` (first) then ``images``."""

    images: list[Image.Image] = field(default_factory=list)
    video: VideoClip | None = None
    response: str | None = None


@dataclass
class PreferenceExample:
    """A record with both sides' media decoded."""

    record: PreferenceRecord
    a: SideMedia
    b: SideMedia


class PreferenceDataset(torch.utils.data.Dataset):
    """Records (a JSONL path or a RecordSet) whose media are decoded in ``__getitem__``, not up front.

    num_frames / fps: video sampling (see ``read_video``; ``fps`` wins when given).
    max_pixels: image size limit; final_image_size: the model processor's resize rule, so each
    image is resized once, to the size the model sees (both: see ``load_image``). A media failure is re-raised as
    :class:`MediaError` naming the record id and its JSONL file as well as the media path.
    """

    def __init__(
        self,
        records: RecordSet | str | Path,
        num_frames: int | None = 8,
        fps: float | None = None,
        max_pixels: int | None = None,
        final_image_size: SizeRule | None = None,
    ):
        self.records = records if isinstance(records, RecordSet) else read_records(records)
        self.num_frames = None if fps is not None else num_frames
        self.fps = fps
        self.max_pixels = max_pixels
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
        images = [once("image", p, lambda p: load_image(p, self.max_pixels, self.final_image_size)) for p in paths]
        video = None
        if side.video is not None:
            video = once("video", side.video, lambda p: read_video(p, num_frames=self.num_frames, fps=self.fps))
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
