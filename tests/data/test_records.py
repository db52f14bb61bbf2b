"""Record schema: reader validation, writer round trip, label_to_int, PreferenceDataset."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmreward.data.dataset import PreferenceDataset
from mmreward.data.media import MediaConfig, MediaError, write_video
from mmreward.data.records import (
    MAX_PATH_CHARS,
    PreferenceRecord,
    RecordError,
    RecordSet,
    Side,
    label_to_int,
    missing_media,
    read_records,
    require_media,
    write_records,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 2), (255, 0, 0)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (4, 2), (0, 0, 255)).save(tmp_path / "img" / "b.png")
    write_video(tmp_path / "vid" / "a.mp4", np.zeros((3, 16, 16, 3), np.uint8), fps=3)
    return tmp_path


def line(**kw) -> str:
    rec = {"id": "r1", "prompt": "p", "a": {"image": "img/a.png"}, "b": {"image": "img/b.png"}, "label": {"overall": "a"}}
    rec.update(kw)
    return json.dumps(rec)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


@pytest.mark.parametrize("value, expected", [("a", 1), ("b", -1), ("tie", 0)])
def test_label_to_int(value, expected):
    assert label_to_int(value) == expected


@pytest.mark.parametrize("value", ["A", "c", "", None, 1])
def test_label_to_int_rejects_other_values(value):
    with pytest.raises(ValueError):
        label_to_int(value)


def test_read_resolves_media_against_the_jsonl_folder(root):
    path = write_lines(
        root / "data.jsonl",
        line(id="r1", a={"image": "img/a.png", "response": "red"}, b={"images": ["img/a.png", "img/b.png"]},
             label={"overall": "tie", "VQ": "b"}, meta={"src": "x"}),
        "",  # blank lines are ignored
        line(id="r2", a={"video": "vid/a.mp4"}, b={"response": "text only"}),
    )
    records = read_records(path)
    assert isinstance(records, RecordSet) and len(records) == 2 and records.skipped == []
    r1, r2 = records
    assert r1 == PreferenceRecord(
        id="r1", prompt="p",
        a=Side(image=root.resolve() / "img/a.png", response="red"),
        b=Side(images=[root.resolve() / "img/a.png", root.resolve() / "img/b.png"]),
        label={"overall": "tie", "VQ": "b"}, meta={"src": "x"},
    )
    assert r2.a.video == root.resolve() / "vid/a.mp4" and r2.meta == {}
    assert r2.b == Side(response="text only")
    assert records[1:] == [r2]


def test_error_names_file_line_and_id(root):
    path = write_lines(root / "d.jsonl", line(id="good"), line(id="bad", label={"overall": "x"}))
    with pytest.raises(RecordError) as info:
        read_records(path)
    err = info.value
    assert (err.path, err.line, err.record_id) == (path, 2, "bad")
    assert str(err) == f"{path}:2 (id 'bad'): unknown label value 'x' for 'overall'; expected one of ('a', 'b', 'tie')"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ('[1, 2]', "must be a JSON object"),
        (line(id=""), "id must be a non-empty string"),
        (line(id=5), "id must be a non-empty string"),
        (line(prompt=None), "prompt must be a string"),
        (line(label="a"), "label must be an object"),
        (line(a="img/a.png"), "side 'a' must be an object"),
        (line(a={"images": "img/a.png"}), "a.images must be a list"),
        (line(a={"response": 3}), "a.response must be a string"),
        (line(a={"image": ""}), "a.image must be a non-empty path string"),
        (line(meta=[1]), "meta must be an object"),
        (line(b={"images": ["img/b.png", "img/../../x.png"]}), "b.images[1] 'img/../../x.png' escapes"),
        (line(a={"video": "vid/missing.mp4"}), "a.video 'vid/missing.mp4' not found"),
    ],
)
def test_field_validation(root, bad, fragment):
    path = write_lines(root / "d.jsonl", bad)
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert fragment in str(info.value)
    assert info.value.line == 1


def test_symlink_pointing_outside_is_an_escape(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (2, 2)).save(outside)
    os.symlink(outside, root / "img" / "link.png")
    os.symlink(root / "img" / "a.png", root / "img" / "inside_link.png")
    path = write_lines(root / "d.jsonl", line(id="in", a={"image": "img/inside_link.png"}), line(id="out", a={"image": "img/link.png"}))
    records = read_records(path, skip_invalid=True)
    assert [r.id for r in records] == ["in"]
    (err,) = records.skipped
    assert err.record_id == "out" and "escapes the JSONL folder" in err.reason


def test_invalid_utf8_names_its_line_and_bom_is_accepted(root):
    path = root / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(id="bom").encode() + b"\n" + b'{"id": "\xff"}\n')
    records = read_records(path, skip_invalid=True)
    assert [r.id for r in records] == ["bom"]
    assert records.skipped[0].line == 2 and "utf-8" in records.skipped[0].reason


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nope.jsonl")


def test_write_read_round_trip_with_relative_paths(root):
    records = read_records(write_lines(root / "src.jsonl", line(id="x", meta={"k": [1, 2]}), line(id="y", label={"overall": "b", "TA": "tie"})))
    out = write_records(root / "copy.jsonl", records)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0] == {"id": "x", "prompt": "p", "a": {"image": "img/a.png"}, "b": {"image": "img/b.png"},
                       "label": {"overall": "a"}, "meta": {"k": [1, 2]}}
    assert list(read_records(out)) == list(records)


def test_writer_makes_absolute_paths_relative_and_accepts_dicts(root):
    rec = PreferenceRecord("r", "p", Side(image=root / "img" / "a.png"), Side(images=[Path("img/b.png")]), {"overall": "b"})
    as_dict = {"id": "d", "prompt": "q", "a": {"video": str(root / "vid" / "a.mp4")}, "b": {"response": "t"}, "label": {"overall": "tie"}}
    out = write_records(root / "o.jsonl", [rec, as_dict])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["a"] == {"image": "img/a.png"} and rows[0]["b"] == {"images": ["img/b.png"]}
    assert rows[1]["a"] == {"video": "vid/a.mp4"} and rows[1]["meta"] == {}
    assert [r.id for r in read_records(out)] == ["r", "d"]


def test_writer_in_a_subfolder_rewrites_paths_relative_to_it(root):
    records = read_records(write_lines(root / "src.jsonl", line(id="x")))
    # The new JSONL sits one level above the media's folder: paths gain the folder name.
    out = write_records(root.parent / "up.jsonl", records)
    assert json.loads(out.read_text())["a"] == {"image": f"{root.name}/img/a.png"}
    # A JSONL in a sibling folder would need ../img/a.png, which readers refuse.
    with pytest.raises(RecordError, match="outside the JSONL folder") as info:
        write_records(root / "other" / "side.jsonl", records)
    assert (info.value.line, info.value.record_id) == (1, "x")
    assert not (root / "other" / "side.jsonl").exists()


@pytest.mark.parametrize(
    "items, fragment",
    [
        ([PreferenceRecord("a", "p", Side(response="x"), Side(), {"overall": "a"})], "side 'b' is empty"),
        ([PreferenceRecord("a", "p", Side(response="x"), Side(response="y"), {})], "label names no dimension"),
        ([{"id": "a", "prompt": "p", "a": {"response": "x"}, "b": {"response": "y"}, "label": {"overall": "a"}}] * 2, "duplicate id"),
        ([PreferenceRecord("a", "p", Side(response="x"), Side(response="y"), {"overall": "a"}, meta={"o": object()})], "not JSON serializable"),
    ],
)
def test_writer_validates(tmp_path, items, fragment):
    with pytest.raises(RecordError) as info:
        write_records(tmp_path / "o.jsonl", items)
    assert fragment in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "o.jsonl"))


# ------------------------------------------------------------------ inputs that used to break the reader


def test_deeply_nested_line_is_a_record_error_and_skippable(root):
    # json.loads raises RecursionError (not a ValueError) on this line: it used to escape read_records
    # even with skip_invalid=True, losing the whole file.
    path = root / "d.jsonl"
    path.write_text(line(id="ok") + "\n" + "[" * 100_000 + "\n" + line(id="ok2") + "\n")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert (info.value.path, info.value.line) == (path, 2) and "nested too deeply" in str(info.value)
    records = read_records(path, skip_invalid=True)
    assert [r.id for r in records] == ["ok", "ok2"] and [e.line for e in records.skipped] == [2]


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_a_file_without_records_is_refused(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match="holds no records") as info:
        read_records(path)
    assert info.value.path == path
    with pytest.raises(RecordError, match="holds no records"):
        read_records(path, skip_invalid=True)


def test_a_file_of_only_bad_records_is_refused_even_when_skipping(root):
    path = write_lines(root / "d.jsonl", line(id="x", label={"overall": "c"}), "{")
    with pytest.raises(RecordError, match=r"no valid record: all 2 were invalid; the first: .*d\.jsonl:1 \(id 'x'\)"):
        read_records(path, skip_invalid=True)


def test_long_bad_values_are_quoted_as_a_short_prefix(root):
    huge = "x" * 5_000_000
    path = write_lines(root / "d.jsonl", line(id="big", label={"overall": huge}), line(id="p", a={"image": huge}),
                       line(id=huge, label={"overall": huge}), line(id="k", label={huge: "q"}))
    records = read_records(write_lines(root / "ok.jsonl", line(id="fine")))
    assert len(records) == 1
    with pytest.raises(RecordError) as info:
        read_records(path)
    message = str(info.value)
    assert len(message) < 400, len(message)
    assert "unknown label value 'xxxx" in message and "... (5,000,000 characters) for 'overall'" in message
    skipped = read_records(write_lines(root / "e.jsonl", line(id="fine"), *path.read_text().splitlines()),
                           skip_invalid=True).skipped
    assert len(skipped) == 4 and all(len(str(e)) < 600 for e in skipped), [len(str(e)) for e in skipped]


def test_over_long_media_paths_are_refused_before_resolving(root, tmp_path):
    import time

    escape = "../" * 1_500_000 + "x.png"  # 4.5 MB: Path.resolve took ~110 s on it
    path = write_lines(root / "d.jsonl", line(id="long", a={"image": escape}))
    start = time.perf_counter()
    with pytest.raises(RecordError, match=f"a.image is 4,500,005 characters long \\(at most {MAX_PATH_CHARS} allowed\\)"):
        read_records(path)
    with pytest.raises(RecordError, match="characters long"):
        write_records(tmp_path / "o.jsonl", [PreferenceRecord("w", "p", Side(image=Path(escape)), Side(response="r"),
                                                              {"overall": "a"})])
    assert time.perf_counter() - start < 2.0
    just_over = "a" * (MAX_PATH_CHARS + 1)
    with pytest.raises(RecordError, match=f"a.image is {MAX_PATH_CHARS + 1:,} characters long"):
        read_records(write_lines(root / "o.jsonl", line(id="over", a={"image": just_over})))
    # A path of exactly the limit is still judged on its merits (here: it escapes the folder).
    at_limit = "a/" + "../" * ((MAX_PATH_CHARS - 7) // 3) + "x.png"
    at_limit = "a" * (MAX_PATH_CHARS - len(at_limit)) + at_limit
    assert len(at_limit) == MAX_PATH_CHARS
    with pytest.raises(RecordError, match="escapes the JSONL folder"):
        read_records(write_lines(root / "e.jsonl", line(id="edge", a={"image": at_limit})))


def test_label_without_overall_is_a_missing_label(root):
    (record,) = read_records(write_lines(root / "d.jsonl", line(id="x", label={"VQ": "b"})))
    assert record.label == {"VQ": "b"}
    with pytest.raises(RecordError, match="label names no dimension"):
        read_records(write_lines(root / "e.jsonl", line(id="x", label={})))


# ------------------------------------------------------------------ media listing and writer guarantees


def test_media_paths_list_every_field_in_order(root):
    side = Side(image=root / "i.png", images=[root / "j.png", root / "k.png"], video=root / "v.mp4", response="r")
    assert side.media_paths() == [root / "i.png", root / "j.png", root / "k.png", root / "v.mp4"]
    assert side.named_media() == [("image", root / "i.png"), ("images[0]", root / "j.png"),
                                  ("images[1]", root / "k.png"), ("video", root / "v.mp4")]
    assert Side(video=root / "v.mp4").media_paths() == [root / "v.mp4"]
    assert Side(response="r").media_paths() == []


def test_missing_media_counts_each_file_once_and_names_the_first_record(root):
    records = [PreferenceRecord("r1", "p", Side(image=root / "img/a.png"), Side(video=root / "vid/gone.mp4"), {"overall": "a"}),
               PreferenceRecord("r2", "p", Side(images=[root / "img/b.png", root / "img/gone.png"]),
                                Side(video=root / "vid/gone.mp4"), {"overall": "b"})]
    assert missing_media(records) == (4, [("r1", "b.video", root / "vid/gone.mp4"), ("r2", "a.images[1]", root / "img/gone.png")])
    with pytest.raises(FileNotFoundError, match=r"^2 of the 4 media files the records name do not exist; first 1: "
                                                r"id 'r1' b\.video .*gone\.mp4$"):
        require_media(records, show=1)
    require_media(records[:0])


def test_writer_accepts_missing_media_and_creates_nested_folders(tmp_path):
    out = tmp_path / "deep" / "er" / "records.jsonl"
    record = PreferenceRecord("r", "p", Side(video=out.parent / "vid" / "later.mp4"), Side(response="t"), {"overall": "a"})
    write_records(out, [record])
    assert json.loads(out.read_text())["a"] == {"video": "vid/later.mp4"}
    with pytest.raises(RecordError, match="not found"):  # the reader does check
        read_records(out)


def test_dataset_loads_media_lazily(root):
    path = write_lines(
        root / "d.jsonl",
        line(id="i", a={"image": "img/a.png", "images": ["img/b.png"]}, b={"response": "r"}),
        line(id="v", a={"video": "vid/a.mp4"}, b={"image": "img/a.png"}),
    )
    ds = PreferenceDataset(path, MediaConfig(num_frames=2, max_pixels=4))
    assert len(ds) == 2
    ex = ds[0]
    assert ex.record.id == "i"
    assert [np.asarray(im)[0, 0].tolist() for im in ex.a.images] == [[255, 0, 0], [0, 0, 255]]
    assert [im.size for im in ex.a.images] == [(2, 1), (2, 1)]  # 4x2 limited to 4 pixels
    assert ex.b.images == [] and ex.b.video is None and ex.b.response == "r"
    ex = ds[1]
    assert ex.a.video.frames.shape == (2, 16, 16, 3) and ex.a.video.indices.tolist() == [0, 2]
    by_rate = PreferenceDataset(read_records(path), MediaConfig(fps=3.0))[1].a.video
    np.testing.assert_allclose(by_rate.timestamps, [0.0, 1 / 3, 2 / 3], atol=1e-6)

    # Media are opened at indexing time: a file removed after construction fails only its item.
    (root / "img" / "b.png").unlink()
    assert ds[1].record.id == "v"
    with pytest.raises(MediaError, match="file not found.*record 'i'"):
        ds[0]


def test_dataset_decodes_media_shared_by_both_sides_once(root, monkeypatch):
    decoded: list[str] = []
    for name in ("image", "video"):  # the decoders MediaConfig calls
        real = getattr(MediaConfig, name)
        monkeypatch.setattr(MediaConfig, name,
                            lambda self, path, *rest, _real=real: decoded.append(Path(path).name) or _real(self, path, *rest))
    path = write_lines(
        root / "d.jsonl",
        # A response pair: one image and one video on both sides, plus an image only side b shows.
        line(id="shared", a={"image": "img/a.png", "video": "vid/a.mp4", "response": "x"},
             b={"image": "img/a.png", "images": ["img/b.png"], "video": "vid/a.mp4", "response": "y"}),
        line(id="distinct"),
    )
    ds = PreferenceDataset(path, MediaConfig(num_frames=2))
    ex = ds[0]
    assert sorted(decoded) == ["a.mp4", "a.png", "b.png"]
    assert ex.b.images[0] is ex.a.images[0] and ex.b.video is ex.a.video
    assert [np.asarray(im)[0, 0].tolist() for im in ex.b.images] == [[255, 0, 0], [0, 0, 255]]
    assert (ex.a.response, ex.b.response) == ("x", "y")

    decoded.clear()
    ex = ds[1]
    assert sorted(decoded) == ["a.png", "b.png"]
    assert np.asarray(ex.a.images[0])[0, 0].tolist() == [255, 0, 0] and np.asarray(ex.b.images[0])[0, 0].tolist() == [0, 0, 255]
    decoded.clear()
    ds[1]  # nothing is kept between items
    assert sorted(decoded) == ["a.png", "b.png"]
