"""Media I/O: frame samplers, frame-accurate video decoding (decord and PyAV), images, FramePool."""

import os
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image, ImageOps

from mmreward.data import media
from mmreward.data.media import (
    FramePool,
    MediaError,
    default_frame_pool,
    get_frame_pool,
    load_image,
    read_video,
    sample_by_count,
    sample_by_fps,
    write_video,
)

BITS = 7  # frame index written as 7 black/white bars, so any off-by-one frame is detected


def coded_frames(n: int, h: int = 32, w: int = 16 * BITS) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        for b in range(BITS):
            if (i >> b) & 1:
                frames[i, :, b * 16:(b + 1) * 16] = 255
    return frames


def decode_index(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[:, b * 16 + 4:(b + 1) * 16 - 4].mean() > 128)


@pytest.fixture(scope="module")
def coded_video(tmp_path_factory) -> Path:
    # 60 frames at 30 fps, keyframe every 10 frames, B-frames on: random access must seek correctly.
    path = tmp_path_factory.mktemp("video") / "coded.mp4"
    return write_video(path, coded_frames(60), fps=30, options={"g": "10", "bf": "2"})


@pytest.fixture
def no_decord(monkeypatch):
    """Make decord fail to open anything, so read_video must take the PyAV path."""

    def refuse(*args, **kwargs):
        raise RuntimeError("decord disabled for this test")

    monkeypatch.setattr(decord, "VideoReader", refuse)


# ------------------------------------------------------------------------ samplers (pure)


@pytest.mark.parametrize(
    "total, k, expected",
    [
        (300, 8, [0, 43, 85, 128, 171, 214, 256, 299]),
        (5, 5, [0, 1, 2, 3, 4]),
        (4, 6, [0, 1, 1, 2, 2, 3]),  # more frames asked than exist: repeats, length stays k
        (1, 3, [0, 0, 0]),
        (10, 1, [0]),
    ],
)
def test_sample_by_count(total, k, expected):
    assert sample_by_count(total, k).tolist() == expected


def test_sample_by_fps_constant_rate():
    ts = np.arange(300) / 30
    assert sample_by_fps(ts, 2).tolist() == list(range(0, 300, 15))
    assert sample_by_fps(ts, 0.25).tolist() == [0, 120, 240]


def test_sample_by_fps_faster_than_the_video_repeats_frames():
    assert sample_by_fps(np.array([0.0, 0.5, 1.0]), 4).tolist() == [0, 0, 1, 1, 2]


def test_sample_by_fps_uses_stream_start_and_tolerates_float_error():
    # Stream starting at 2.0 s, timestamps stored slightly below their nominal value.
    ts = np.array([2.0, 2.1 - 1e-8, 2.2 - 1e-8, 2.3])
    assert sample_by_fps(ts, 10).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("call", [lambda: sample_by_count(0, 3), lambda: sample_by_count(3, 0), lambda: sample_by_fps(np.array([0.0]), 0)])
def test_samplers_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------ video decoding


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_sampled_frames_are_the_right_frames(coded_video, backend, request):
    if backend == "pyav":
        request.getfixturevalue("no_decord")
    clip = read_video(coded_video, num_frames=7)
    assert clip.indices.tolist() == [0, 10, 20, 30, 39, 49, 59]
    assert [decode_index(f) for f in clip.frames] == clip.indices.tolist()
    np.testing.assert_allclose(clip.timestamps, clip.indices / 30, atol=1e-6)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (7, 32, 16 * BITS, 3)
    assert clip.fps == pytest.approx(30.0) and clip.num_frames_total == 60 and len(clip) == 7

    by_rate = read_video(coded_video, fps=4)
    assert by_rate.indices.tolist() == [0, 7, 15, 22, 30, 37, 45, 52]  # frame on screen at k / 4 s
    assert [decode_index(f) for f in by_rate.frames] == by_rate.indices.tolist()

    everything = read_video(coded_video)
    assert [decode_index(f) for f in everything.frames] == list(range(60))


def test_backends_agree(coded_video, monkeypatch):
    with_decord = read_video(coded_video, num_frames=5)
    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("off")))
    with_pyav = read_video(coded_video, num_frames=5)
    assert with_pyav.indices.tolist() == with_decord.indices.tolist()
    np.testing.assert_allclose(with_pyav.timestamps, with_decord.timestamps, atol=1e-6)
    assert np.abs(with_pyav.frames.astype(int) - with_decord.frames.astype(int)).mean() < 2


def test_pyav_fallback_failure_reports_both_reasons(tmp_path, no_decord):
    bad = tmp_path / "x.mp4"
    bad.write_text("not a video")
    with pytest.raises(MediaError, match=r"decord: RuntimeError: decord disabled for this test; PyAV: "):
        read_video(bad)


@pytest.mark.parametrize("kwargs", [{"num_frames": 2, "fps": 1.0}, {"num_frames": 0}, {"fps": 0.0}, {"fps": -1.0}])
def test_read_video_rejects_bad_sampling(coded_video, kwargs):
    with pytest.raises(ValueError):
        read_video(coded_video, **kwargs)


def test_write_video_variable_rate_round_trip(tmp_path):
    stamps = [0.0, 0.04, 0.5, 0.52, 2.0]
    path = write_video(tmp_path / "v.mp4", coded_frames(5), timestamps=np.array(stamps))
    clip = read_video(path)
    np.testing.assert_allclose(clip.timestamps, stamps, atol=1e-6)
    assert [decode_index(f) for f in clip.frames] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "frames, kwargs",
    [
        (np.zeros((2, 15, 16, 3), np.uint8), {}),  # odd height
        (np.zeros((2, 16, 16, 3), np.float32), {}),
        (np.zeros((2, 16, 16), np.uint8), {}),
        (np.zeros((2, 16, 16, 3), np.uint8), {"timestamps": np.array([0.0, 0.0])}),
        (np.zeros((2, 16, 16, 3), np.uint8), {"timestamps": np.array([0.0])}),
    ],
)
def test_write_video_validates(tmp_path, frames, kwargs):
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", frames, **kwargs)


# ------------------------------------------------------------------------ images


@pytest.mark.parametrize(
    "size, max_pixels, expected",
    [((100, 50), 1250, (50, 25)), ((100, 50), 5000, (100, 50)), ((10, 10), 50, (7, 7)), ((3, 1000), 10, (1, 10)), ((4, 2), 1, (1, 1))],
)
def test_max_pixels_downsizes_preserving_aspect(tmp_path, size, max_pixels, expected):
    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "i.png")
    img = load_image(tmp_path / "i.png", max_pixels=max_pixels)
    assert img.size == expected
    assert img.size[0] * img.size[1] <= max_pixels


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (JPEG-friendly), `size` = (width, height)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (max(2, size[1] // 32), max(2, size[0] // 32), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def _halve(width: int, height: int) -> tuple[int, int]:
    """A stand-in processor rule: half the size, rounded down to even sides."""
    return width // 4 * 2, height // 4 * 2


def test_final_size_resizes_once_to_the_processors_size(tmp_path, monkeypatch):
    _photo((300, 200)).save(tmp_path / "i.png")
    calls = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    img = load_image(tmp_path / "i.png", max_pixels=100 * 100, final_size=_halve)
    # The cap gives 122 x 81, the rule 60 x 40: one resize, straight from 300 x 200 to 60 x 40.
    assert img.size == (60, 40) and calls == [(60, 40)]
    calls.clear()
    assert load_image(tmp_path / "i.png", final_size=_halve).size == (150, 100) and calls == [(150, 100)]
    calls.clear()
    assert load_image(tmp_path / "i.png", final_size=lambda w, h: (w, h)).size == (300, 200) and calls == []


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpeg_decodes_at_reduced_scale_with_the_same_result(tmp_path, monkeypatch, orientation):
    """A 1600 x 1200 JPEG capped to 200 x 150: decoded at 1/4 scale (400 x 300, twice the target) and
    resized once; the picture matches a full decode to within JPEG noise, EXIF rotation included."""
    from PIL import JpegImagePlugin

    exif = Image.Exif()
    exif[0x0112] = orientation
    _photo((1600, 1200)).save(tmp_path / "big.jpg", quality=92, exif=exif)
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or original(self, mode, size))
    shown = (1600, 1200) if orientation == 1 else (1200, 1600)
    cap = shown[0] // 8 * (shown[1] // 8)
    fast = load_image(tmp_path / "big.jpg", max_pixels=cap)
    assert fast.size == (shown[0] // 8, shown[1] // 8)
    assert drafts == [(400, 300)]  # twice the target, in the file's stored (unrotated) orientation
    with Image.open(tmp_path / "big.jpg") as raw:  # full decode, oriented, one resize: the reference
        reference = ImageOps.exif_transpose(raw.convert("RGB")).resize(fast.size, Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(fast, dtype=np.int64) - np.asarray(reference, dtype=np.int64))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8, (diff.mean(), np.percentile(diff, 99))
    drafts.clear()
    # A target over half the size leaves no room for a reduced decode.
    assert load_image(tmp_path / "big.jpg", max_pixels=1000 * 750).size == (shown[0] * 5 // 8, shown[1] * 5 // 8)
    assert drafts == []


def test_max_pixels_must_be_positive(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "i.png")
    with pytest.raises(ValueError):
        load_image(tmp_path / "i.png", max_pixels=0)


@pytest.mark.parametrize(
    "mode, value, expected",
    [("L", 77, [77, 77, 77]), ("1", 1, [255, 255, 255]), ("LA", (100, 0), [255, 255, 255]), ("LA", (100, 255), [100, 100, 100])],
)
def test_other_modes(tmp_path, mode, value, expected):
    Image.new(mode, (1, 1), value).save(tmp_path / "i.png")
    assert np.asarray(load_image(tmp_path / "i.png"))[0, 0].tolist() == expected


def test_decompression_bomb_is_a_media_error(tmp_path, monkeypatch):
    Image.new("RGB", (8, 6)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 48 pixels > 2 * limit -> Pillow refuses
    with pytest.raises(MediaError, match="decompression bomb") as info:
        load_image(tmp_path / "big.png")
    assert info.value.path == tmp_path / "big.png"


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(tmp_path)


# ------------------------------------------------------------------------ frame pool


def test_pool_decodes_each_video_once(coded_video, monkeypatch):
    pool = FramePool()
    calls = []
    real = media.read_video
    monkeypatch.setattr(media, "read_video", lambda *a, **k: calls.append(a) or real(*a, **k))

    first = pool.get(coded_video, num_frames=8)
    again = pool.get(coded_video, num_frames=8)
    assert again is first and len(calls) == 1
    assert (pool.stats.hits, pool.stats.misses, pool.stats.entries) == (1, 1, 1)
    assert pool.stats.bytes == first.frames.nbytes
    # Pool index i is clip frame i, and its video frame is indices[i].
    assert [decode_index(first.frames[i]) for i in range(8)] == first.indices.tolist()

    pool.get(coded_video, fps=2.0)  # other sampling: another entry
    link = coded_video.parent / "link.mp4"
    link.symlink_to(coded_video)
    assert pool.get(link, fps=2.0) is pool.get(coded_video, fps=2.0)  # same file through a symlink
    assert (pool.stats.hits, pool.stats.misses, pool.stats.entries) == (3, 2, 2)
    assert len(calls) == 2


def test_pool_frames_are_read_only(coded_video):
    clip = FramePool().get(coded_video, num_frames=2)
    with pytest.raises(ValueError):
        clip.frames[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        clip.indices[0] = 5


def test_pool_sees_a_changed_file(tmp_path):
    path = write_video(tmp_path / "v.mp4", coded_frames(4), fps=4)
    pool = FramePool()
    before = pool.get(path, num_frames=1)
    write_video(path, coded_frames(4)[::-1].copy(), fps=4)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # make sure mtime differs
    after = pool.get(path, num_frames=1)
    assert (decode_index(before.frames[0]), decode_index(after.frames[0])) == (0, 3)
    assert pool.stats.misses == 2


def test_pool_evicts_least_recently_used(coded_video, tmp_path):
    one = FramePool().get(coded_video, num_frames=1).frames.nbytes
    pool = FramePool(max_bytes=2 * one)
    pool.get(coded_video, num_frames=1)
    pool.get(coded_video, fps=0.5)  # 1 frame too
    pool.get(coded_video, num_frames=1)  # refresh: fps=0.5 is now the oldest
    pool.get(coded_video, fps=1.0 / 3)  # third entry evicts fps=0.5
    assert pool.stats.evictions == 1 and pool.stats.entries == 2
    pool.get(coded_video, num_frames=1)
    assert pool.stats.hits == 2
    pool.get(coded_video, fps=0.5)
    assert pool.stats.misses == 4

    too_big = pool.get(coded_video, num_frames=3)  # larger than max_bytes: returned, not kept
    assert len(too_big) == 3 and pool.stats.entries == 2 and pool.stats.bytes <= pool.max_bytes


def test_default_pool(coded_video):
    default_frame_pool.clear()
    a = get_frame_pool(coded_video, num_frames=3)
    b = get_frame_pool(coded_video, num_frames=3)
    assert a is b and default_frame_pool.stats.hits == 1
    default_frame_pool.clear()
    assert default_frame_pool.stats.entries == 0


def test_pool_missing_file(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        FramePool().get(tmp_path / "none.mp4", num_frames=2)


def test_media_and_record_errors_survive_pickling():
    import pickle

    from mmreward.data.records import RecordError

    media = pickle.loads(pickle.dumps(MediaError("clips/a.mp4", "truncated")))
    assert (media.path, media.reason, str(media)) == (Path("clips/a.mp4"), "truncated", "clips/a.mp4: truncated")
    record = pickle.loads(pickle.dumps(RecordError("bad label", "d/x.jsonl", 3, "p7")))
    assert (record.path, record.line, record.record_id) == (Path("d/x.jsonl"), 3, "p7")
    assert str(record) == "d/x.jsonl:3 (id 'p7'): bad label"
