"""Qwen-VL's video frame rules (qwen-vl-utils' `fetch_video`), as VideoAlign samples videos.

VideoAlign (and so the released VideoReward checkpoint) reads videos with its copy of
qwen-vl-utils' `vision_process.py`: decord decodes the clip; the frame count follows the rate rule
(`fps` frames per second of video, at least 4, at most 768 and the clip's length, rounded to an
even number), or a given count rounded to an even number; indices are `torch.linspace(0, N - 1,
count).round()`; every frame is then resized, as uint8 with bicubic antialiasing, to the
28-multiple size closest to its own whose area lies in `[min_pixels, max_pixels]`. A model
trained on such frames is scored on the same frames (`QwenFrames`; `MediaConfig(video_sampling="qwen")`).
The rounding is Python's and torch's (half to even), as in the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmreward.data.media import MediaError, VideoClip, read_video

FRAME_FACTOR = 2  # frames per temporal patch: the count is kept even
IMAGE_FACTOR = 28  # patch 14 x merge 2: frame sides are multiples of this
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
MAX_ASPECT_RATIO = 200


def _round_to(x: float, factor: int) -> int:
    return round(x / factor) * factor


def _ceil_to(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def _floor_to(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def qwen_frame_count(total: int, video_fps: float, fps: float = 2.0, num_frames: int | None = None) -> int:
    """Frames sampled from a clip of `total` frames at `video_fps` (qwen-vl-utils' `smart_nframes`)."""
    if num_frames is not None:
        count = _round_to(num_frames, FRAME_FACTOR)
    else:
        min_frames = _ceil_to(FPS_MIN_FRAMES, FRAME_FACTOR)
        max_frames = _floor_to(min(FPS_MAX_FRAMES, total), FRAME_FACTOR)
        count = _round_to(min(max(total / video_fps * fps, min_frames), max_frames), FRAME_FACTOR)
    count = min(count, total)
    if not FRAME_FACTOR <= count <= total:
        raise ValueError(f"{count} frames do not fit the rule: the clip has {total} frames (at least "
                         f"{FRAME_FACTOR} are needed)")
    return count


def qwen_frame_size(height: int, width: int, min_pixels: int = VIDEO_MIN_PIXELS,
                    max_pixels: int = VIDEO_MAX_PIXELS) -> tuple[int, int]:
    """`(height, width)`: multiples of 28 near the frame's own, area within the bounds (`smart_resize`)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT_RATIO}")
    h = max(IMAGE_FACTOR, _round_to(height, IMAGE_FACTOR))
    w = max(IMAGE_FACTOR, _round_to(width, IMAGE_FACTOR))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = _floor_to(height / beta, IMAGE_FACTOR), _floor_to(width / beta, IMAGE_FACTOR)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = _ceil_to(height * beta, IMAGE_FACTOR), _ceil_to(width * beta, IMAGE_FACTOR)
    return h, w


@dataclass(frozen=True)
class QwenFrames:
    """Qwen-VL's frame rules (module docstring).

    fps: frames per second of video when `num_frames` is None (VideoAlign: 2.0).
    num_frames: a fixed count instead (rounded to an even number).
    min_pixels / max_pixels: bounds of each resized frame's area (VideoAlign: max 200,704 = 448 x 448;
        the minimum is qwen-vl-utils' default, 100,352, which enlarges small videos).
    """

    fps: float = 2.0
    num_frames: int | None = None
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.fps <= 0 or (self.num_frames is not None and self.num_frames < 1):
            raise ValueError(f"QwenFrames: fps must be > 0 and num_frames >= 1, got {self.fps}, {self.num_frames}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"QwenFrames: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")

    def indices(self, total: int, video_fps: float) -> np.ndarray:
        count = qwen_frame_count(total, video_fps, self.fps, self.num_frames)
        # float32 linspace rounded half to even, exactly as the source computes it
        return torch.linspace(0, total - 1, count).round().long().numpy()

    def resize(self, frames: np.ndarray) -> np.ndarray:
        """`[T, H, W, 3]` uint8 frames at this rule's size (bicubic with antialiasing, uint8 result)."""
        from torchvision.transforms import InterpolationMode  # imported on first use: torchvision loads slowly
        from torchvision.transforms.functional import resize

        height, width = qwen_frame_size(frames.shape[1], frames.shape[2], self.min_pixels, self.max_pixels)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        out = resize(video, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return out.permute(0, 2, 3, 1).contiguous().numpy()

    def read(self, path: str | Path) -> VideoClip:
        """The clip's frames sampled and resized by this rule (MediaError names the file)."""
        clip = read_video(path, sampler=self.indices)
        try:
            frames = self.resize(clip.frames)
        except ValueError as err:
            raise MediaError(path, str(err)) from err
        return VideoClip(frames, clip.timestamps, clip.indices, clip.fps, clip.num_frames_total)
