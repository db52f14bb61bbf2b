"""A torch Dataset over preference records that loads each record's media when it is indexed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.utils.data
from PIL import Image

from mmreward.data.media import MediaError, VideoClip, load_image, read_video
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
    max_pixels: image size limit (see ``load_image``). A media failure is re-raised as
    :class:`MediaError` naming the record id and its JSONL file as well as the media path.
    """

    def __init__(
        self,
        records: RecordSet | str | Path,
        num_frames: int | None = 8,
        fps: float | None = None,
        max_pixels: int | None = None,
    ):
        self.records = records if isinstance(records, RecordSet) else read_records(records)
        self.num_frames = None if fps is not None else num_frames
        self.fps = fps
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def _load_side(self, side: Side) -> SideMedia:
        paths = ([side.image] if side.image is not None else []) + side.images
        images = [load_image(p, max_pixels=self.max_pixels) for p in paths]
        video = read_video(side.video, num_frames=self.num_frames, fps=self.fps) if side.video is not None else None
        return SideMedia(images=images, video=video, response=side.response)

    def __getitem__(self, index: int) -> PreferenceExample:
        record = self.records[index]
        try:
            return PreferenceExample(record, self._load_side(record.a), self._load_side(record.b))
        except MediaError as e:
            raise MediaError(e.path, f"{e.reason} (record {record.id!r} in {self.records.path})") from e
