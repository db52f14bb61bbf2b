"""A newcomer's mistakes with the stage, evaluation and data scripts: each ends in one line naming the flag, file
or record, exit code 2, and no folder left behind. The scripts run in-process through `mmreward.cli.run`,
exactly as `python script.py ...` runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmreward.cli import run
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]


def _fails(relative: str, argv: list[str], capsys) -> str:
    """Run the script; assert exit code 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exited:
        run(load_script(relative).main, argv)
    # transformers' own "Loading weights" bar may come first when a model was loaded before the mistake showed
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in line]
    assert exited.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    config = SyntheticConfig(image_splits=SplitSizes(8, 4, 4), video_splits=SplitSizes(0, 0, 0))
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, config=config)


def _reward_args(synthetic, out: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "train" / "configs" / "reward_image.yaml"), "--train_file",
            str(synthetic["images/train"]), "--val_file", str(synthetic["images/val"]), "--output_dir", str(out),
            "--max_steps", "1", *extra]


def test_reward_stage_mistakes(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert "unknown option --max_stpes (did you mean --max_steps?)" in _fails(
        "train/reward.py", _reward_args(synthetic, out, "--max_stpes", "20"), capsys)
    assert "unknown option --max_step " in _fails("train/reward.py", _reward_args(synthetic, out, "--max_step", "20"),
                                                  capsys) + " "
    assert "--config nope.yaml: no such file" in _fails("train/reward.py", ["--config", "nope.yaml"], capsys)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "weights.txt").write_text("hello")
    assert f"--backbone {not_a_model}" in _fails("train/reward.py", _reward_args(synthetic, out, "--backbone",
                                                                                 str(not_a_model)), capsys)
    broken = Path(synthetic["images/train"]).with_name("broken.jsonl")  # beside the media its records name
    lines = Path(synthetic["images/train"]).read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    err = _fails("train/reward.py", _reward_args(synthetic, out, "--train_file", str(broken)), capsys)
    assert f"{broken}:2" in err
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"stage": "eval_preference"}))
    err = _fails("train/reward.py", _reward_args(synthetic, other), capsys)
    assert "--output_dir" in err and "eval_preference" in err
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json"]


def test_evaluation_mistakes(synthetic, scalar_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    test_file = str(synthetic["images/test"])
    assert "--model" in _fails("eval/preference.py", ["--model", str(tmp_path / "absent"), "--data", test_file,
                                                      "--out", str(out)], capsys)
    assert "nope.jsonl" in _fails("eval/preference.py", ["--model", str(scalar_checkpoint), "--data",
                                                         str(tmp_path / "nope.jsonl"), "--out", str(out)], capsys)
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"stage": "reward"}))
    err = _fails("eval/preference.py", ["--model", str(scalar_checkpoint), "--data", test_file, "--out", str(other)],
                 capsys)
    assert f"--out {other}" in err and "holds a 'reward' run" in err
    with pytest.raises(SystemExit, match="0"):
        run(load_script("eval/preference.py").main, ["--model", str(scalar_checkpoint), "--data", test_file, "--out",
                                                 str(out)])
    capsys.readouterr()
    err = _fails("eval/preference.py", ["--model", str(scalar_checkpoint), "--data", str(synthetic["images/val"]),
                                        "--out", str(out)], capsys)
    assert str(out) in err and "--out" in err and "--overwrite" in err
    err = _fails("eval/compare.py", [str(other), "--out", str(tmp_path / "cmp")], capsys)
    assert str(other) in err and not (tmp_path / "cmp").exists()


def test_master_key_needs_a_threshold_for_a_scalar_head(synthetic, scalar_checkpoint, tmp_path, capsys):
    data = "vl_rewardbench:" + str(ROOT / "tests/fixtures/benchmarks/vl_rewardbench/test-00000-of-00001.parquet")
    err = _fails("eval/master_key.py", ["--model", str(scalar_checkpoint), "--data", data, "--criterion",
                                        "pointwise", "--out", str(tmp_path / "mk")], capsys)
    assert "--threshold" in err and not (tmp_path / "mk").exists()


def test_data_script_mistakes(tmp_path, capsys):
    assert "--image-sizes" in _fails("data/make_synthetic.py", ["--out", str(tmp_path / "s"), "--image-sizes", "1,2"],
                                     capsys)
    assert not (tmp_path / "s").exists()
    err = _fails("data/convert_benchmark.py", ["no_such_benchmark", str(tmp_path / "x.csv"), "--out",
                                               str(tmp_path / "r.jsonl")], capsys)
    assert "no_such_benchmark" in err and "videogen_rewardbench" in err
