"""Every item of the bad-input corpus in tests/fixtures/bad/ (regenerate with tests/fixtures/make_bad.py).

Unusual-but-valid media must load with exact pixels / timestamps; broken media must raise
MediaError naming the file; bad records must raise RecordError naming file, line and id.
"""

from pathlib import Path

import numpy as np
import pytest

from mmreward.data.dataset import PreferenceDataset
from mmreward.data.media import FramePool, MediaConfig, MediaError, load_image, read_video
from mmreward.data.records import RecordError, read_records

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"
IMAGES, VIDEOS, RECORDS = BAD / "images", BAD / "videos", BAD / "records.jsonl"


def test_corpus_is_small():
    assert sum(p.stat().st_size for p in BAD.rglob("*") if p.is_file()) < 1_000_000


# ------------------------------------------------------------------------ images that must load


@pytest.mark.parametrize(
    "name, expected",
    [
        # 16-bit grey 0, 256, 32896, 65535 rescaled by 1/257 (Pillow alone would clip 256 -> 255).
        ("gray16.png", [[0, 0, 0], [1, 1, 1], [128, 128, 128], [255, 255, 255]]),
        # CMYK (0,255,255,0)=red, (255,0,0,0)=cyan, no ink=white, full K=black.
        ("cmyk.tiff", [[255, 0, 0], [0, 255, 255], [255, 255, 255], [0, 0, 0]]),
        # Opaque red; fully transparent red -> white; half-transparent blue over white.
        ("rgba.png", [[255, 0, 0], [255, 255, 255], [127, 127, 255]]),
        ("palette.png", [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]]),
        # Palette index 3 (black) is transparent -> white background.
        ("palette_transparent.png", [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]),
    ],
)
def test_unusual_image_modes_load_as_rgb(name, expected):
    img = load_image(IMAGES / name)
    assert img.mode == "RGB"
    assert np.asarray(img).reshape(-1, 3).tolist() == expected


def test_exif_orientation_is_applied():
    # Stored 2x1 (red | blue) with orientation 6: displayed rotated 90° clockwise -> 1x2, red on top.
    img = load_image(IMAGES / "exif_rotated.png")
    assert img.size == (1, 2)
    assert np.asarray(img).reshape(-1, 3).tolist() == [[255, 0, 0], [0, 0, 255]]


# ------------------------------------------------------------------------ images that must fail


@pytest.mark.parametrize(
    "name, fragment",
    [("truncated.png", "truncated"), ("not_an_image.png", "not a readable image"), ("missing.png", "file not found")],
)
def test_broken_images_raise_media_error(name, fragment):
    path = IMAGES / name
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)
    assert info.value.path == path


def test_zero_byte_image():
    with pytest.raises(MediaError, match="empty"):
        load_image(VIDEOS / "empty.mp4")


# ------------------------------------------------------------------------ videos that must load


def test_one_frame_video_repeats_to_requested_count():
    clip = read_video(VIDEOS / "one_frame.mp4", num_frames=4)
    assert clip.num_frames_total == 1
    assert clip.indices.tolist() == [0, 0, 0, 0]
    assert clip.timestamps.tolist() == [0.0] * 4
    assert clip.frames.shape == (4, 48, 64, 3)
    assert np.abs(clip.frames.astype(int) - 200).max() <= 3
    assert read_video(VIDEOS / "one_frame.mp4", fps=2).indices.tolist() == [0]


def test_variable_frame_rate_timestamps_come_from_the_stream():
    stamps = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0]
    clip = read_video(VIDEOS / "vfr.mp4")
    np.testing.assert_allclose(clip.timestamps, stamps, atol=1e-6)
    # Index/fps would put frame 7 at 7 / avg_fps, nowhere near its real 1.0 s.
    assert abs(7 / clip.fps - 1.0) > 0.2
    # Frame i is grey level 20 * i.
    np.testing.assert_allclose(clip.frames[:, 24, 32, 0], [20 * i for i in range(8)], atol=4)

    by_rate = read_video(VIDEOS / "vfr.mp4", fps=10)
    # Sample times 0, 0.1, ..., 1.0 -> the frame on screen at each time.
    assert by_rate.indices.tolist() == [0, 1, 2, 2, 3, 5, 5, 5, 5, 6, 7]
    np.testing.assert_allclose(by_rate.timestamps, [stamps[i] for i in by_rate.indices], atol=1e-6)


# ------------------------------------------------------------------------ videos that must fail


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("truncated.mp4", "unreadable"),  # index intact, frame data cut off
        ("truncated_no_index.mp4", "cannot decode video"),  # moov atom lost
        ("empty.mp4", "empty (0 bytes)"),
        ("not_a_video.mp4", "cannot decode video"),
        ("audio_only.mp4", "no video stream"),
        ("missing.mp4", "file not found"),
    ],
)
def test_broken_videos_raise_media_error(name, fragment):
    path = VIDEOS / name
    with pytest.raises(MediaError) as info:
        read_video(path, num_frames=4)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)
    with pytest.raises(MediaError):
        FramePool().get(path, num_frames=4)


# ------------------------------------------------------------------------ records

# line -> (id or None when the line is not JSON, fragment of the reason)
BAD_LINES = {
    2: (None, "malformed JSON"),
    3: ("no_label", "missing field(s) ['label']"),
    4: ("bad_label_value", "unknown label value 'c'"),
    5: ("bad_dim_value", "unknown label value 'left' for 'MQ'"),
    6: ("no_dims", "label names no dimension"),
    7: ("ok1", "duplicate id (first seen on line 1)"),
    8: ("missing_file", "not found"),
    9: ("escape_dotdot", "escapes the JSONL folder"),
    10: ("escape_absolute", "is absolute"),
    11: ("unknown_field", "unknown field(s) ['extra']"),
    12: ("unknown_side_field", "unknown field(s) ['img']"),
    13: ("empty_side", "side 'b' is empty"),
}


def test_every_bad_record_is_skipped_with_its_own_error():
    records = read_records(RECORDS, skip_invalid=True)
    assert [r.id for r in records] == ["ok1", "ok_video", "broken_video"]
    assert {e.line: (e.record_id, e.reason) for e in records.skipped}.keys() == BAD_LINES.keys()
    for error in records.skipped:
        record_id, fragment = BAD_LINES[error.line]
        assert error.record_id == record_id
        assert fragment in error.reason
        assert error.path == RECORDS
        message = str(error)
        assert message.startswith(f"{RECORDS}:{error.line}")
        if record_id is not None:
            assert repr(record_id) in message


def test_strict_read_raises_on_the_first_bad_record():
    with pytest.raises(RecordError) as info:
        read_records(RECORDS)
    assert info.value.line == 2
    assert "malformed JSON" in str(info.value)


def test_broken_media_in_a_valid_record_names_the_record():
    dataset = PreferenceDataset(read_records(RECORDS, skip_invalid=True), MediaConfig(num_frames=4))
    example = dataset[1]  # ok_video loads
    assert example.record.id == "ok_video"
    assert example.a.video.frames.shape == (4, 48, 64, 3)
    with pytest.raises(MediaError) as info:
        dataset[2]
    message = str(info.value)
    assert message.startswith(str(VIDEOS / "truncated.mp4"))
    assert "'broken_video'" in message and str(RECORDS) in message
