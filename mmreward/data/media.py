"""Image and video I/O for reward-model inputs.

Images go through Pillow and always come back as RGB with EXIF orientation applied. Videos go
through decord (random access: only the sampled frames are decoded) with PyAV as the fallback when
decord cannot read a file. Frames are sampled by count or by rate, and their timestamps are read
from the stream, so variable-frame-rate videos report when each frame is really shown.
``FramePool`` caches decoded clips so the VR-Thinker tool loop decodes each video once per process.

Any media that cannot be used raises :class:`MediaError` naming the file.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import av
import decord
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from mmreward.errors import MmrewardError

if TYPE_CHECKING:
    from mmreward.data.qwen_video import QwenFrames

__all__ = [
    "MediaError",
    "MediaConfig",
    "VIDEO_SAMPLINGS",
    "load_image",
    "SizeRule",
    "VideoClip",
    "read_video",
    "sample_by_count",
    "sample_by_fps",
    "write_video",
    "CacheStats",
    "FramePool",
    "get_frame_pool",
    "default_frame_pool",
]


class MediaError(MmrewardError):
    """A media file that cannot be used; the message starts with the file's path."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):
        # Rebuild from (path, reason) so the error survives DataLoader worker / multiprocessing pickling.
        return (type(self), (self.path, self.reason))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")


# --------------------------------------------------------------------------------------- images

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping or dropping content."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> RGB conversion clips at 255 instead of rescaling; map 0..65535 to 0..255.
        values = np.asarray(img, dtype=np.int64).clip(0, 65535)
        gray = ((values + 128) // 257).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        # Transparent areas would otherwise show whatever colour the file stores under alpha=0.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) downscaled (aspect preserved) so that width * height <= max_pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    # Floating-point rounding can leave the product one row over the limit.
    while new_w * new_h > max_pixels and (new_w > 1 or new_h > 1):
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


# A processor's resize rule: (width, height) in -> (width, height) it resizes the image to.
SizeRule = Callable[[int, int], tuple[int, int]]
# EXIF orientations that swap width and height (transpose, 90°, transverse, 270°).
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale only down to twice the target size, so the final
# resize still has pixels to average (the reducing gap Image.thumbnail uses by default).
_DRAFT_GAP = 2


def _target_size(size: tuple[int, int], max_pixels: int | None, final_size: SizeRule | None) -> tuple[int, int]:
    width, height = size
    if max_pixels is not None:
        width, height = _fit_pixels(width, height, max_pixels)
    return final_size(width, height) if final_size is not None else (width, height)


def _draft_jpeg(img: Image.Image, max_pixels: int | None, final_size: SizeRule | None) -> tuple[int, int] | None:
    """Let a JPEG decode at reduced scale when the target allows; returns its displayed (EXIF-oriented)
    full size, or None for other formats or when nothing is to be resized."""
    if img.format != "JPEG" or (max_pixels is None and final_size is None):
        return None
    swapped = img.getexif().get(ExifTags.Base.Orientation) in _SWAPPED_ORIENTATIONS
    shown = (img.height, img.width) if swapped else img.size
    target = _target_size(shown, max_pixels, final_size)
    if target[0] * _DRAFT_GAP < shown[0] and target[1] * _DRAFT_GAP < shown[1]:
        request = (target[1], target[0]) if swapped else target
        img.draft(None, (request[0] * _DRAFT_GAP, request[1] * _DRAFT_GAP))
    return shown


def load_image(path: str | Path, max_pixels: int | None = None, final_size: SizeRule | None = None) -> Image.Image:
    """Load an image as RGB with EXIF orientation applied.

    Every Pillow mode is converted: 16-bit grey is rescaled (not clipped), alpha is composited on
    white, palettes are expanded, CMYK goes through Pillow's conversion. ``max_pixels`` downsizes
    (aspect ratio preserved) so that width * height stays within it. ``final_size`` is the model
    processor's own resize rule (e.g. :func:`mmreward.collate.processor_image_size`): the image is
    then resized once, straight to the size the processor would give the capped image, so the
    processor's resize does nothing. A JPEG with room to spare is decoded at 1/2, 1/4 or 1/8 scale
    (Pillow's draft mode, done in the decoder) down to twice that size before the one resize.
    Missing, empty, truncated, unidentifiable or decompression-bomb images raise :class:`MediaError`.
    """
    path = Path(path)
    _check_file(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    try:
        with Image.open(path) as img:
            full_size = _draft_jpeg(img, max_pixels, final_size)
            img.load()  # decode now so truncation surfaces here, inside the try
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise MediaError(path, f"image too large (decompression bomb guard): {e}") from e
    except UnidentifiedImageError as e:
        raise MediaError(path, "not a readable image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(path, f"cannot decode image: {e}") from e
    target = _target_size(full_size or rgb.size, max_pixels, final_size)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    return rgb


# --------------------------------------------------------------------------------------- videos


@dataclass
class VideoClip:
    """Sampled frames of a video.

    frames: [T, H, W, 3] uint8 RGB. timestamps: [T] presentation time of each frame in seconds,
    from the stream. indices: [T] frame index in the video (presentation order). fps: the stream's
    average frame rate. num_frames_total: frames in the whole video.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    fps: float
    num_frames_total: int

    def __len__(self) -> int:
        return len(self.frames)


def sample_by_count(total: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread uniformly over ``[0, total - 1]``, first and last included.

    When ``num_frames > total`` indices repeat, so the clip always has exactly ``num_frames``
    frames (a one-frame video gives that frame ``num_frames`` times).
    """
    if total < 1:
        raise ValueError("video has no frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.rint(np.linspace(0, total - 1, num_frames)).astype(np.int64)


def sample_by_fps(timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Frame on screen every ``1 / fps`` seconds, from the first frame to the last frame's start.

    ``timestamps`` are the start times of all frames (sorted). Each sample time takes the last
    frame starting at or before it, so a frozen stretch of a variable-frame-rate video shows up as
    repeated indices, exactly as a viewer would see it.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    ts = np.asarray(timestamps, dtype=np.float64)
    if len(ts) == 0:
        raise ValueError("video has no frames")
    count = int(math.floor((ts[-1] - ts[0]) * fps + 1e-9)) + 1
    targets = ts[0] + np.arange(count) / fps
    # 0.1 ms of slack absorbs rounding of stored timestamps (decord returns float32 seconds), far
    # below any real frame spacing.
    return np.searchsorted(ts, targets + 1e-4, side="right").astype(np.int64) - 1


# A frame-index rule other than by count or by rate: (frames in the video, its average frame rate)
# -> indices; e.g. `mmreward.data.qwen_video.QwenFrames.indices`.
FrameSampler = Callable[[int, float], np.ndarray]


def _select(total: int, avg_fps: float, timestamps_fn, num_frames: int | None, fps: float | None,
            sampler: FrameSampler | None) -> np.ndarray:
    if sampler is not None:
        return np.asarray(sampler(total, avg_fps), dtype=np.int64)
    if num_frames is not None:
        return sample_by_count(total, num_frames)
    if fps is not None:
        return sample_by_fps(timestamps_fn(), fps)
    return np.arange(total, dtype=np.int64)


def _read_decord(path: Path, num_frames: int | None, fps: float | None, sampler: FrameSampler | None) -> VideoClip:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    total = len(reader)
    if total < 1:
        raise RuntimeError("no frames")
    indices = _select(total, float(reader.get_avg_fps()), lambda: reader.get_frame_timestamp(list(range(total)))[:, 0],
                      num_frames, fps, sampler)
    unique, inverse = np.unique(indices, return_inverse=True)
    # get_batch seeks to the nearest keyframe before each index, so only the needed GOPs are decoded.
    frames = reader.get_batch(unique.tolist()).asnumpy()[inverse]
    timestamps = reader.get_frame_timestamp(unique.tolist())[:, 0].astype(np.float64)[inverse]
    return VideoClip(frames, timestamps, indices, float(reader.get_avg_fps()), total)


def _read_pyav(path: Path, num_frames: int | None, fps: float | None, sampler: FrameSampler | None) -> VideoClip:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base
        rate = stream.average_rate
        # Pass 1: presentation timestamps from the packets alone (no decoding); empty packets are flushes.
        packets = [p for p in container.demux(stream) if p.size]
    if any(p.pts is None for p in packets):
        raise MediaError(path, "video packets without timestamps")
    pts = sorted(p.pts for p in packets)
    total = len(pts)
    if total < 1:
        raise MediaError(path, "video stream has no frames")
    all_ts = np.array([float(p * time_base) for p in pts])
    avg_fps = float(rate) if rate else float(total / max(all_ts[-1] - all_ts[0], 1e-9))
    indices = _select(total, avg_fps, lambda: all_ts, num_frames, fps, sampler)
    # Frames are matched by pts, not by count, so a frame the decoder drops cannot shift the others.
    wanted = {pts[i]: i for i in indices.tolist()}
    last = pts[int(indices.max())]
    decoded: dict[int, np.ndarray] = {}
    # Pass 2: decode in presentation order and keep only the sampled frames; stop after the last one.
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts in wanted:
                decoded[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
            if frame.pts is not None and frame.pts >= last:
                break
    missing = set(wanted.values()) - decoded.keys()
    if missing:
        raise MediaError(path, f"frame {min(missing)} is unreadable (truncated?); decoded {len(decoded)} of the sampled frames")
    frames = np.stack([decoded[i] for i in indices.tolist()])
    return VideoClip(frames, all_ts[indices], indices, avg_fps, total)


def read_video(path: str | Path, num_frames: int | None = None, fps: float | None = None,
               sampler: FrameSampler | None = None) -> VideoClip:
    """Decode the sampled frames of a video.

    Give at most one of ``num_frames`` (uniform over the video, first and last frame included,
    repeats when the video is shorter; see :func:`sample_by_count`), ``fps`` (the frame on
    screen every 1/fps seconds; see :func:`sample_by_fps`) and ``sampler`` (any other rule, from
    the frame count and average rate); none means every frame. decord reads the file; if decord
    fails, PyAV tries; if both fail the :class:`MediaError` carries both reasons.
    """
    if sum(x is not None for x in (num_frames, fps, sampler)) > 1:
        raise ValueError("give one of num_frames, fps and sampler, not several")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    _check_file(path)
    try:
        return _read_decord(path, num_frames, fps, sampler)
    except Exception as decord_error:  # decord raises RuntimeError / DECORDError / others; all mean "try PyAV"
        # decord prefixes its messages with "[hh:mm:ss] /source/file.cc:line: "; keep only the reason.
        reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(decord_error).strip()).splitlines()[0]
        first = f"{type(decord_error).__name__}: {reason}"
    try:
        return _read_pyav(path, num_frames, fps, sampler)
    except MediaError as e:
        raise MediaError(path, f"{e.reason} (decord: {first})") from e
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"cannot decode video (decord: {first}; PyAV: {e})") from e


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 30.0,
    timestamps: np.ndarray | None = None,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> Path:
    """Write [T, H, W, 3] uint8 RGB frames to a video file with PyAV (H and W must be even).

    ``timestamps`` (seconds, increasing) make a variable-frame-rate video, stored with millisecond
    precision; otherwise frames are ``1 / fps`` apart. ``options`` are passed to the encoder
    (e.g. ``{"g": "30", "crf": "23"}``).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {frames.shape[1:3]}")
    if timestamps is not None:
        pts = np.rint(np.asarray(timestamps, dtype=np.float64) * 1000).astype(np.int64)
        if len(pts) != len(frames) or np.any(np.diff(pts) <= 0):
            raise ValueError("timestamps must be one per frame and strictly increasing (at 1 ms precision)")
        time_base = Fraction(1, 1000)
    else:
        time_base = 1 / Fraction(fps).limit_denominator(1001)
        pts = np.arange(len(frames))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=dict(options or {}))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Both the encoder and the stream must use our time base, or the encoder requantizes pts to its rate.
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
        for frame_rgb, p in zip(frames, pts.tolist()):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = p, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# ----------------------------------------------------------------------------------- settings

VIDEO_SAMPLINGS = ("uniform", "qwen")


@dataclass
class MediaConfig:
    """How images and videos are decoded.

    num_frames: "uniform": frames spread evenly over each video, first and last included (ignored when
        `fps` is set); "qwen": a fixed count instead of the rate rule (rounded to an even number).
    fps: "uniform": the frame on screen every 1/fps seconds; "qwen": frames per second of video
        (default 2.0 there).
    max_pixels: downscale images above this many pixels (None: keep the file's size).
    video_sampling: "uniform" (`mmreward.data.media.read_video`) or "qwen" (Qwen-VL's and VideoAlign's
        rules: `mmreward.data.qwen_video`, frames resized to 28-multiples).
    video_min_pixels / video_max_pixels: "qwen" only: bounds of each frame's area (defaults:
        qwen-vl-utils' 100,352 and 602,112; VideoAlign's checkpoints use a maximum of 200,704).
    """

    num_frames: int | None = 8
    fps: float | None = None
    max_pixels: int | None = None
    video_sampling: str = "uniform"
    video_min_pixels: int | None = None
    video_max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.video_sampling not in VIDEO_SAMPLINGS:
            raise ValueError(f"MediaConfig.video_sampling must be one of {VIDEO_SAMPLINGS}, got {self.video_sampling!r}")
        if self.video_sampling == "uniform" and (self.video_min_pixels or self.video_max_pixels):
            raise ValueError("video_min_pixels / video_max_pixels apply to video_sampling='qwen' only")
        if self.video_sampling == "qwen":
            self.qwen_frames()  # validates the bounds now, not at the first video

    def qwen_frames(self) -> "QwenFrames":
        from mmreward.data.qwen_video import (  # needs torch
            VIDEO_MAX_PIXELS,
            VIDEO_MIN_PIXELS,
            QwenFrames,
        )

        return QwenFrames(fps=self.fps if self.fps is not None else 2.0,
                          num_frames=self.num_frames if self.fps is None else None,
                          min_pixels=self.video_min_pixels or VIDEO_MIN_PIXELS,
                          max_pixels=self.video_max_pixels or VIDEO_MAX_PIXELS)

    def image(self, path: str | Path, final_size: SizeRule | None = None) -> Image.Image:
        """`load_image` with this cap; `final_size`: the model processor's resize rule (see there)."""
        return load_image(path, max_pixels=self.max_pixels, final_size=final_size)

    def video(self, path: str | Path) -> VideoClip:
        if self.video_sampling == "qwen":
            return self.qwen_frames().read(path)
        return read_video(path, num_frames=None if self.fps is not None else self.num_frames, fps=self.fps)


# ----------------------------------------------------------------------------------- frame pool


@dataclass
class CacheStats:
    """Counters of a :class:`FramePool` (hits + misses = lookups)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class FramePool:
    """Process-local LRU cache of sampled clips.

    The key is (resolved path, mtime, size, num_frames, fps), so an edited file is decoded again
    and a symlink shares the entry of its target. Cached frames are read-only because every caller
    shares the same array. Clips larger than ``max_bytes`` are returned but not kept.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._clips: OrderedDict[tuple, VideoClip] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**vars(self._stats))

    def clear(self) -> None:
        with self._lock:
            self._clips.clear()
            self._stats = CacheStats()

    def get(self, path: str | Path, fps: float | None = None, num_frames: int | None = None) -> VideoClip:
        """The clip ``read_video(path, num_frames, fps)`` would return, decoded at most once."""
        path = Path(path)
        _check_file(path)
        resolved = path.resolve()
        st = resolved.stat()
        key = (str(resolved), st.st_mtime_ns, st.st_size, num_frames, fps)
        with self._lock:
            clip = self._clips.get(key)
            if clip is not None:
                self._clips.move_to_end(key)
                self._stats.hits += 1
                return clip
            self._stats.misses += 1
        # Decode outside the lock so other videos are not blocked behind this one.
        clip = read_video(path, num_frames=num_frames, fps=fps)
        for array in (clip.frames, clip.timestamps, clip.indices):
            array.flags.writeable = False
        size = clip.frames.nbytes
        with self._lock:
            if size <= self.max_bytes and key not in self._clips:
                self._clips[key] = clip
                self._stats.bytes += size
                while self._stats.bytes > self.max_bytes:
                    _, old = self._clips.popitem(last=False)
                    self._stats.bytes -= old.frames.nbytes
                    self._stats.evictions += 1
            self._stats.entries = len(self._clips)
        return clip


default_frame_pool = FramePool()


def get_frame_pool(path: str | Path, fps: float | None = None, num_frames: int | None = None) -> VideoClip:
    """Sampled clip from the process-wide :data:`default_frame_pool`; index frames by pool index."""
    return default_frame_pool.get(path, fps=fps, num_frames=num_frames)
