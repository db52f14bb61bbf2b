"""Qwen-VL / VideoAlign frame rules: exact values as VideoAlign's own vision_process.py computes them
(smart_nframes, smart_resize and the rounded float32 linspace, run on these inputs)."""

import numpy as np
import pytest
import torch

from mmreward.data.media import MediaConfig, MediaError, write_video
from mmreward.data.qwen_video import QwenFrames, qwen_frame_count, qwen_frame_size


@pytest.mark.parametrize("total,video_fps,fps,num_frames,expected", [
    (150, 30.0, 2.0, None, 10),
    (75, 30.0, 2.0, None, 4),      # 5 frames at 2 fps rounds half to even: 4
    (126, 24.0, 2.0, None, 10),
    (60, 16.0, 2.0, None, 8),
    (30, 30.0, 2.0, None, 4),      # at least 4
    (5, 30.0, 2.0, None, 4),       # at most the clip's length, kept even
    (2000, 24.0, 2.0, None, 166),
    (81, 16.0, 2.0, None, 10),
    (45, 8.0, 2.0, None, 12),
    (100, 25.0, 2.0, 7, 8),        # a given count rounds to even: 7 -> 8, 5 -> 4
    (100, 25.0, 2.0, 5, 4),
    (6, 25.0, 2.0, 9, 6),          # never more than the clip has
])
def test_frame_count(total, video_fps, fps, num_frames, expected):
    assert qwen_frame_count(total, video_fps, fps, num_frames) == expected


def test_frame_count_refuses_a_one_frame_clip():
    with pytest.raises(ValueError, match="at least 2"):
        qwen_frame_count(1, 30.0)


@pytest.mark.parametrize("height,width,min_pixels,max_pixels,expected", [
    (240, 320, 100352, 200704, (280, 392)),   # small videos are enlarged to the minimum area
    (720, 1280, 100352, 200704, (336, 588)),
    (752, 1360, 100352, 200704, (308, 588)),
    (384, 688, 100352, 200704, (308, 588)),
    (64, 64, 100352, 602112, (336, 336)),
    (1080, 1920, 100352, 602112, (560, 1008)),
    (100, 3000, 3136, 12845056, (112, 2996)),
])
def test_frame_size(height, width, min_pixels, max_pixels, expected):
    assert qwen_frame_size(height, width, min_pixels, max_pixels) == expected


def test_frame_size_refuses_extreme_aspect_ratios():
    with pytest.raises(ValueError, match="aspect ratio"):
        qwen_frame_size(10, 2100)


@pytest.mark.parametrize("total,count,expected", [
    (126, 10, [0, 14, 28, 42, 56, 69, 83, 97, 111, 125]),
    (81, 10, [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]),
    (45, 12, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44]),
])
def test_indices_are_rounded_float32_linspace(total, count, expected):
    frames = QwenFrames(num_frames=count)
    assert frames.indices(total, 30.0).tolist() == expected


def test_read_samples_and_resizes_a_video(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (45, 64, 96, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=15.0)
    clip = QwenFrames(fps=2.0, max_pixels=200704).read(path)  # 3 s at 15 fps: 6 frames
    assert clip.frames.shape == (6, *qwen_frame_size(64, 96, 100352, 200704), 3) and clip.frames.dtype == np.uint8
    assert clip.indices.tolist() == torch.linspace(0, 44, 6).round().long().tolist()
    assert clip.num_frames_total == 45
    # The same clip through MediaConfig, as a checkpoint's settings ask for it.
    again = MediaConfig(num_frames=None, fps=2.0, video_sampling="qwen", video_max_pixels=200704).video(path)
    assert np.array_equal(again.frames, clip.frames)


def test_read_names_the_file_of_a_clip_too_short(tmp_path):
    path = write_video(tmp_path / "one.mp4", np.zeros((1, 32, 32, 3), dtype=np.uint8), fps=10.0)
    with pytest.raises(MediaError, match="one.mp4"):
        QwenFrames().read(path)


def test_media_config_refuses_qwen_bounds_for_uniform_sampling():
    with pytest.raises(ValueError, match="video_sampling='qwen' only"):
        MediaConfig(video_max_pixels=1000)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        MediaConfig(video_sampling="qwen", video_min_pixels=5000, video_max_pixels=1000)
