"""Benchmark readers on tiny fixtures with the benchmarks' real field names (tests/fixtures/benchmarks)."""

import csv
from collections import Counter
import json
import shutil
from pathlib import Path

import pytest

from mmreward.data.formats import MODULES, READERS, describe_missing_labels, missing_label_counts, read_benchmark
from mmreward.data.formats.multimodal_rewardbench import category_of
from mmreward.data.formats.vl_rewardbench import subset_of
from mmreward.data.records import RecordError, read_records, write_records
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
# Each reader's fixture: tests/fixtures/benchmarks/<name>/<its SOURCE_FILE> (make_fixtures.py writes them).
SOURCES = {name: module.SOURCE_FILE for name, module in MODULES.items() if module.SOURCE_FILE is not None}


@pytest.fixture
def bench(tmp_path):
    """Copy one benchmark fixture to a temporary folder and return (folder, source file)."""

    def copy(name: str) -> tuple[Path, Path]:
        root = tmp_path / name
        shutil.copytree(FIXTURES / name, root)
        return root, root / SOURCES[name]

    return copy


def roundtrip(records, out: Path):
    write_records(out, records)
    back = read_records(out)  # also checks that every media file exists inside the folder
    assert [r.id for r in back] == [r.id for r in records]
    for before, after in zip(records, back):
        assert after == before
    return back


def test_registry_finds_every_reader_and_its_fixture():
    assert sorted(READERS) == sorted(p.stem for p in (ROOT / "mmreward" / "data" / "formats").glob("[!_]*.py"))
    for name, source in SOURCES.items():
        assert (FIXTURES / name / source).is_file(), name
        assert MODULES[name].NAME == name
    assert sorted(SOURCES) == sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    with pytest.raises(KeyError, match="unknown benchmark"):
        read_benchmark("nope", "x.csv")


def test_videogen_rewardbench(bench):
    root, src = bench("videogen_rewardbench")
    records = READERS["videogen_rewardbench"](src)
    assert [r.id for r in records] == ["videogen-0", "videogen-1", "videogen-2"]
    first = records[0]
    assert first.prompt == "Static camera, a metal ball rolls on a smooth tabletop."
    assert first.a.video == root / "videos/kling1.5/kling1.5_00103.mp4"
    assert first.b.video == root / "videos/minimax/minimax_00103.mp4"
    assert first.label == {"overall": "a", "VQ": "a", "MQ": "a", "TA": "tie"}
    assert records[1].label == {"overall": "b", "VQ": "b", "MQ": "tie", "TA": "b"}
    assert records[2].label == {"overall": "tie", "VQ": "tie", "TA": "a"}  # empty MQ cell: missing
    assert records[2].prompt == 'A cat, "quoted", on a sofa'
    assert first.meta == {
        "benchmark": "videogen_rewardbench", "source_row": 0,
        "path_A": "videos/kling1.5/kling1.5_00103.mp4", "path_B": "videos/minimax/minimax_00103.mp4",
        "A_model": "kling1.5", "B_model": "minimax", "VQ": "A", "MQ": "A", "TA": "same", "Overall": "A",
        "fps_A": "4.0", "num_frames_A": "4", "fps_B": "4.0", "num_frames_B": "4",
    }
    roundtrip(records, root / "records.jsonl")


def test_genai_bench_video_votes_and_urls(bench):
    root, src = bench("genai_bench_video")
    records = READERS["genai_bench_video"](src, media_root=root / "videos")
    assert [r.label["overall"] for r in records] == ["a", "b", "tie", "tie"]
    assert [r.meta["vote_type"] for r in records] == ["leftvote", "rightvote", "tievote", "bothbad_vote"]
    assert records[0].a.video == root / "videos/a1.mp4"  # found by the URL's file name
    assert records[0].b.video == root / "videos/b1.mp4"
    assert records[0].meta["left_video"] == "https://example.org/genai-arena/video/a1.mp4"
    assert records[0].meta["left_model"] == "AnimateDiff"
    assert records[3].meta["tstamp"] == 1717000003.5
    assert records[3].id == "genai-video-3"
    roundtrip(records, root / "records.jsonl")


def test_mjbench_video_overall_and_aspects(bench):
    root, src = bench("mjbench_video")
    records = READERS["mjbench_video"](src)
    assert [r.id for r in records] == [f"mjbench-video-{k}" for k in range(4)]
    first, second, capital, hard = records
    assert first.prompt == "A red kite over a beach"
    # The real paths (test/0_0.mp4) start in videos/: the default media root; "Video 1" is video_0.
    assert first.a.video == root / "videos/test/0_0.mp4" and first.b.video == root / "videos/test/0_1.mp4"
    assert first.label == {"overall": "a", "Alignment": "a", "Safety": "tie", "Fineness": "b",
                           "Coherence & Consistency": "tie", "Bias": "tie"}
    assert first.meta["video_0_overall_score"]["Alignment"] == 1 and first.meta["discard"] is False
    assert "missing_labels" not in first.meta
    assert second.label["overall"] == "tie" and second.label["Alignment"] == "b"
    # Values MJ-Video's evaluation does not count are missing labels, kept in meta: never a stop.
    assert capital.label == {"Bias": "tie"}
    assert capital.meta["missing_labels"] == {dim: "Video 1 Better" for dim in
                                              ["overall", "Alignment", "Safety", "Fineness", "Coherence & Consistency"]}
    assert hard.label == {"Alignment": "a", "Safety": "tie", "Fineness": "b", "Bias": "tie"}
    assert hard.meta["missing_labels"] == {"overall": "Hard to judge", "Coherence & Consistency": "Hard to judge"}
    assert missing_label_counts(records) == Counter({
        ("overall", "Video 1 Better"): 1, ("overall", "Hard to judge"): 1, ("Alignment", "Video 1 Better"): 1,
        ("Safety", "Video 1 Better"): 1, ("Fineness", "Video 1 Better"): 1,
        ("Coherence & Consistency", "Video 1 Better"): 1, ("Coherence & Consistency", "Hard to judge"): 1})
    assert describe_missing_labels(records).startswith("2 overall and 5 other labels are missing")
    roundtrip(records, root / "records.jsonl")
    # Another layout: --media-root names the folder the paths start from.
    (root / "videos").rename(root / "clips")
    assert READERS["mjbench_video"](src, media_root=root / "clips")[0].a.video == root / "clips/test/0_0.mp4"


def test_mjbench_video_bad_values(tmp_path):
    base = {"caption": "c", "video_0_path": "test/0_0.mp4", "video_1_path": "test/0_1.mp4"}
    (tmp_path / "t.json").write_text(json.dumps([{**base, "overall_preference": 1}]))
    with pytest.raises(RecordError, match=r"t\.json:1 \(id 'mjbench-video-0'\): field 'overall_preference' must be a string"):
        READERS["mjbench_video"](tmp_path / "t.json")
    (tmp_path / "t.json").write_text(json.dumps([{**base, "overall_preference": "Hard to judge",
                                                  "category_preference": {"Bias": "Hard to judge"}}]))
    with pytest.raises(RecordError, match="no usable label"):
        READERS["mjbench_video"](tmp_path / "t.json")


def test_vl_rewardbench_parquet_with_embedded_images(bench, tmp_path):
    root, src = bench("vl_rewardbench")
    records = READERS["vl_rewardbench"](src, media_out=root / "media")
    assert [r.label["overall"] for r in records] == ["a", "b", "a", "b", "a"]
    assert [(r.meta["subset"], r.meta["category"]) for r in records] == [
        ("rlaif-v", "hallucination"), ("reasoning_tasks", "reasoning"), ("wildvision-battle", "general"),
        ("povid", "hallucination"), ("vlfeedback", "general")]
    first = records[0]
    assert first.id == "RLAIF-V-Dataset_12"
    assert first.prompt == "What is in the image?"
    assert (first.a.response, first.b.response) == ("A dog.", "A cat.")
    assert first.a.image == first.b.image == root / "media/RLAIF-V-Dataset_12.png"
    assert first.a.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.meta["human_ranking"] == [0, 1]
    assert first.meta["image"] == {"path": "0.png", "written_to": "RLAIF-V-Dataset_12.png"}
    assert "response" not in first.meta and "query" not in first.meta
    roundtrip(records, root / "records.jsonl")
    with pytest.raises(RecordError, match="pass media_out"):
        READERS["vl_rewardbench"](src)


def test_vl_rewardbench_json_with_image_paths(tmp_path):
    (tmp_path / "img.png").write_bytes((FIXTURES / "multimodal_rewardbench/images/nocaps/13062.png").read_bytes())
    rows = [{"id": "RLHF-V_1", "query": "q", "response": ["x", "y"], "image": "img.png", "human_ranking": [1, 1]}]
    (tmp_path / "vl.json").write_text(json.dumps(rows))
    (record,) = READERS["vl_rewardbench"](tmp_path / "vl.json")
    assert record.a.image == tmp_path / "img.png"
    assert record.label == {"overall": "tie"}
    assert subset_of("RLHF-V_1") == "rlhf-v"


def test_multimodal_rewardbench(bench):
    root, src = bench("multimodal_rewardbench")
    records = READERS["multimodal_rewardbench"](src)
    assert [r.id for r in records] == ["nocaps_13062", "pairs_occupation_1", "mathvista_2"]
    assert [r.label["overall"] for r in records] == ["b", "a", "a"]
    assert [r.meta["category"] for r in records] == ["open_generation/correctness_task", "safety/bias", "reasoning/math"]
    assert records[1].meta["Category"] == "safety" and records[1].meta["Better"] == "Output1"
    assert records[0].a.image == root / "images/nocaps/13062.png"
    assert records[0].b.response == "A marbled teapot on a table."
    assert category_of("EMMA-Coding_3", "reasoning") == "reasoning/coding"
    assert category_of("hateful_1", "safety") == "safety/toxicity"
    roundtrip(records, root / "records.jsonl")


def test_mmrlhf_rewardbench_items_and_frames(bench):
    root, src = bench("mmrlhf_rewardbench")
    records = READERS["mmrlhf_rewardbench"](src)
    assert [r.id for r in records] == ["mcq_17#0", "mcq_17#1", "vid_3#0", "video_8#0"]
    assert [r.meta["item_id"] for r in records] == ["mcq_17", "mcq_17", "vid_3", "video_8"]
    assert all(r.label == {"overall": "a"} for r in records)
    first, _, short, long = records
    assert (first.a.response, first.b.response) == ("B", "A")
    assert first.a.image == root / "images/mcq/17.png"
    assert first.meta["category"] == "mcq" and first.meta["modality"] == "image"
    assert first.meta["chosen_reason"] == "correct"
    # 32 frames as the official evaluation samples them: np.linspace(0, n - 1, 32, dtype=int) over the
    # sorted files. Three files: floor(2k / 31) is 0 for k < 16, 1 for k < 31 and 2 at k = 31.
    frames = root / "images/v_VSONGdnvKiM-Scene-012"
    assert short.a.images == [frames / f"c01_000{k}.jpeg" for k in [1] * 16 + [2] * 15 + [3]]
    assert short.meta["modality"] == "video_frames" and short.meta["video_frames"] == 3
    assert "category" not in short.meta
    # Forty files: frame floor(39k / 31), so 8 of the 40 are never shown.
    assert long.a.images == long.b.images == [root / f"videos/clip_8/frame_{39 * k // 31:03d}.png" for k in range(32)]
    assert len(set(long.a.images)) == 32 and long.meta["video_frames"] == 40 and long.meta["category"] == "video"
    roundtrip(records, root / "records.jsonl")


def test_mmrlhf_missing_frame_folder(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "v", "video": "nope", "prompt": "p", "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(RecordError, match=r"b\.jsonl:1 \(id 'v#0'\): video frame folder not found"):
        READERS["mmrlhf_rewardbench"](tmp_path / "b.jsonl")


def test_synthetic_passthrough(tmp_path):
    src = FIXTURES / "multimodal_rewardbench/images/nocaps/13062.png"
    (tmp_path / "x.png").write_bytes(src.read_bytes())
    write_records(tmp_path / "test.jsonl", [{"id": "s0", "prompt": "one red circle", "a": {"image": "x.png"},
                                              "b": {"image": "x.png"}, "label": {"overall": "tie", "TA": "tie"},
                                              "meta": {"varies": []}}])
    (record,) = READERS["synthetic"](tmp_path / "test.jsonl")
    assert record.a.image == tmp_path / "x.png"
    assert record.label == {"overall": "tie", "TA": "tie"}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_bad_rows_name_file_line_and_id(tmp_path):
    header = ["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "Overall"]
    _write_csv(tmp_path / "v.csv", header, [["a.mp4", "b.mp4", "p", "A", "A", "A", "A"],
                                            ["a.mp4", "b.mp4", "p", "A", "A", "A", "C"]])
    with pytest.raises(RecordError, match=r"v\.csv:3 \(id 'videogen-1'\): field 'Overall' has unknown value 'C'"):
        READERS["videogen_rewardbench"](tmp_path / "v.csv")
    _write_csv(tmp_path / "w.csv", header[:-1], [["a.mp4", "b.mp4", "p", "A", "A", "A"]])
    with pytest.raises(RecordError, match="missing field 'Overall'"):
        READERS["videogen_rewardbench"](tmp_path / "w.csv")
    (tmp_path / "g.json").write_text(json.dumps([{"prompt": "p", "left_video": "a.mp4", "right_video": "b.mp4",
                                                   "vote_type": "upvote"}]))
    with pytest.raises(RecordError, match=r"g\.json:1 \(id 'genai-video-0'\): field 'vote_type' has unknown value"):
        READERS["genai_bench_video"](tmp_path / "g.json")
    (tmp_path / "m.json").write_text(json.dumps([{"ID": "x", "Text": "t", "Image": "i.png", "Output1": "a",
                                                   "Output2": "b", "Better": "Output3", "Category": "c"}]))
    with pytest.raises(RecordError, match="'Better' has unknown value 'Output3'"):
        READERS["multimodal_rewardbench"](tmp_path / "m.json")
    (tmp_path / "t.txt").write_text("")
    with pytest.raises(ValueError, match="unsupported benchmark file type"):
        READERS["videogen_rewardbench"](tmp_path / "t.txt")


def test_bad_source_files_fail_with_the_file_and_row(tmp_path):
    row = {"id": "x", "image": "i.png", "prompt": "p", "chosen": "a", "rejected": "b"}
    (tmp_path / "deep.jsonl").write_text(json.dumps(row) + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(RecordError, match=r"deep\.jsonl:2: malformed JSON: nested too deeply"):
        READERS["mmrlhf_rewardbench"](tmp_path / "deep.jsonl")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(RecordError, match=r"deep\.json: malformed JSON: nested too deeply"):
        READERS["mjbench_video"](tmp_path / "deep.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(RecordError, match=r"empty\.json: the mjbench_video file holds no records"):
        read_benchmark("mjbench_video", tmp_path / "empty.json")
    (tmp_path / "long.jsonl").write_text(json.dumps({**row, "image": "../" * 1_500_000}) + "\n")
    with pytest.raises(RecordError, match=r"long\.jsonl:1 \(id 'x#0'\): media path is 4,500,000 characters long"):
        READERS["mmrlhf_rewardbench"](tmp_path / "long.jsonl")
    header = "path_A,path_B,prompt,VQ,MQ,TA,Overall\n"
    (tmp_path / "wide.csv").write_text(header + "a.mp4,b.mp4,p,A,A,A,A\n" + "a.mp4,b.mp4," + "x" * 200_000 + ",A,A,A,A\n")
    with pytest.raises(RecordError, match=r"wide\.csv:3: malformed CSV: field larger than field limit"):
        READERS["videogen_rewardbench"](tmp_path / "wide.csv")
    (tmp_path / "latin.csv").write_bytes((header + "a.mp4,b.mp4,p,A,A,A,A\na.mp4,b.mp4,caf\xe9,A,A,A,A\n").encode("latin-1"))
    with pytest.raises(RecordError, match=r"latin\.csv:3: not UTF-8 text"):
        READERS["videogen_rewardbench"](tmp_path / "latin.csv")
    (tmp_path / "latin.jsonl").write_bytes(json.dumps(row).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    with pytest.raises(RecordError, match=r"latin\.jsonl:2: 'utf-8' codec can't decode"):
        READERS["mmrlhf_rewardbench"](tmp_path / "latin.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + bytes(64))
    with pytest.raises(RecordError, match=r"broken\.parquet: unreadable Parquet file"):
        READERS["genai_bench_video"](tmp_path / "broken.parquet")
    (tmp_path / "big.json").write_text(json.dumps([{"caption": "c", "video_0_path": "a", "video_1_path": "b",
                                                    "overall_preference": ["x" * 1_000_000]}]))
    with pytest.raises(RecordError) as info:
        READERS["mjbench_video"](tmp_path / "big.json")
    assert len(str(info.value)) < 400


def test_convert_benchmark_cli(bench, capsys):
    cli = load_script("data/convert_benchmark.py")
    root, src = bench("vl_rewardbench")
    cli.main(["vl_rewardbench", str(src), "--out", str(root / "records.jsonl")])
    assert "wrote 5 records" in capsys.readouterr().out
    records = read_records(root / "records.jsonl")
    assert records[1].a.image == root / "media/vl_rewardbench/mathverse_7.png"

    root, src = bench("videogen_rewardbench")
    with pytest.raises(RecordError, match="outside the JSONL folder"):
        cli.main(["videogen_rewardbench", str(src), "--out", str(root / "sub" / "records.jsonl")])


def test_convert_mjbench_video_reports_missing_labels_and_media(bench, capsys):
    """The documented command on MJ-Bench-Video's layout: the paths resolve in videos/, the summary
    counts the labels left missing, and absent videos are reported."""
    cli = load_script("data/convert_benchmark.py")
    root, src = bench("mjbench_video")
    cli.main(["mjbench_video", str(src), "--out", str(root / "records.jsonl")])
    out = capsys.readouterr()
    assert "wrote 4 records" in out.out and "'missing': 2" in out.out
    assert "2 overall and 5 other labels are missing" in out.out and out.err == ""
    assert read_records(root / "records.jsonl")[0].a.video == root / "videos/test/0_0.mp4"
    (root / "videos/test/0_0.mp4").unlink()
    cli.main(["mjbench_video", str(src), "--out", str(root / "again.jsonl")])
    assert "warning: 1 of 2 media files do not exist yet" in capsys.readouterr().err
