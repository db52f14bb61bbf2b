"""The VR-Thinker stage scripts as a newcomer meets them: a mistake (a misspelled flag or a prefix of one, a missing
--config, a model path that is not a model or a stage, a missing or bad data file, an output folder holding another
run) ends in one line naming the flag, file or record, exit code 2 and no output folder; `--help` answers at once
(without importing TRL or torch) and shows --config and the script's purpose."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmreward.cli import run
from mmreward.manifest import finalize_run_dir, start_run_dir
from vr_thinker.judge import save_judge_config
from vr_thinker.presets import load_preset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
import vrt_grpo  # noqa: E402  (train/vrt_grpo.py, a script under test)
import vrt_grpo_trl  # noqa: E402
import vrt_rejection  # noqa: E402
import vrt_sft  # noqa: E402

SCRIPTS = {"vrt_sft": vrt_sft, "vrt_rejection": vrt_rejection, "vrt_grpo": vrt_grpo, "vrt_grpo_trl": vrt_grpo_trl}
CONFIGS = {"vrt_sft": "vrt_sft.yaml", "vrt_rejection": "vrt_rejection.yaml", "vrt_grpo": "vrt_grpo.yaml",
           "vrt_grpo_trl": "vrt_grpo_trl_baseline.yaml"}
STEPS_FLAG = {"vrt_sft": "--max_steps", "vrt_rejection": "--max_pairs", "vrt_grpo": "--max_steps",
              "vrt_grpo_trl": "--max_steps"}
FROM_STAGE = ("vrt_rejection", "vrt_grpo", "vrt_grpo_trl")  # start from a VR-Thinker stage directory


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A finished vrt_sft stage directory with its protocol (no weights: every check runs before a model loads), a
    record file with two videos per pair, a record file with a bad third line, a model folder without config.json
    and a finished run of another stage."""
    root = tmp_path_factory.mktemp("vrt_cli")
    judge = root / "judge"
    start_run_dir(judge)
    preset = load_preset("vr-thinker", ["frames.per_video=4"])
    save_judge_config(judge, preset, preset.dimensions()[:1])
    finalize_run_dir(judge, "vrt_sft", inputs={}, metrics={})
    label = {"TA": "a", "overall": "a"}
    good = [{"id": f"p{i}", "prompt": "a cat", "a": {"video": "a.mp4"}, "b": {"video": "b.mp4"}, "label": label}
            for i in range(3)]
    for video in ("a.mp4", "b.mp4"):  # read_records checks that media exist; nothing decodes them here
        (root / video).write_bytes(b"")
    records = root / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in good))
    bad = root / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in good[:2]) + "{not json\n")
    not_a_model = root / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "weights.bin").write_bytes(b"w")
    other_run = root / "other_run"
    start_run_dir(other_run)
    finalize_run_dir(other_run, "reward", inputs={}, metrics={})
    return {"root": root, "judge": judge, "records": records, "bad": bad, "not_a_model": not_a_model,
            "other_run": other_run}


def fails(name: str, argv: list[str], capsys) -> str:
    """Run the script's main through `mmreward.cli.run` and return its one-line error (exit code 2 asserted)."""
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPTS[name].main, ["--config", str(ROOT / "train" / "configs" / CONFIGS[name]), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def valid(name: str, inputs: dict[str, Path], out: Path) -> list[str]:
    """Settings that pass every check, each mistake below spoils one of them."""
    model = "tiny" if name == "vrt_sft" else str(inputs["judge"])
    data = str(inputs["records"])
    extra = ["--eval_records", data] if name == "vrt_grpo" else []  # its config asks for a fixed eval set
    return ["--model_path", model, "--data", data, "--output_dir", str(out), *extra]


@pytest.mark.parametrize("name", SCRIPTS)
def test_flag_typos_and_prefixes_are_refused_naming_the_flag(name, inputs, capsys):
    out = inputs["root"] / f"{name}_typo"
    flag = STEPS_FLAG[name]
    line = fails(name, [*valid(name, inputs, out), flag[:-1], "3"], capsys)  # a prefix is no abbreviation
    assert line == f"error: unknown option {flag[:-1]} (did you mean {flag}?)"
    line = fails(name, [*valid(name, inputs, out), "--outptu_dir", "x"], capsys)
    assert line == "error: unknown option --outptu_dir (did you mean --output_dir?)"
    assert not out.exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_config_file_is_named(name, inputs, capsys):
    missing = inputs["root"] / "missing.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPTS[name].main, ["--config", str(missing)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --config {missing}: no such file"
    typo = inputs["root"] / f"{name}_typo.yaml"
    typo.write_text("output_dri: somewhere\n")
    with pytest.raises(SystemExit):
        run(SCRIPTS[name].main, ["--config", str(typo)])
    assert capsys.readouterr().err.strip() == (f"error: --config {typo}: unknown setting --output_dri "
                                               "(did you mean --output_dir?)")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_model_path_that_is_not_a_model_is_refused_before_anything_is_written(name, inputs, capsys):
    out = inputs["root"] / f"{name}_model"
    args = valid(name, inputs, out)
    for model, expected in ((inputs["root"] / "nowhere", "--model_path {}: no such directory"),
                            (inputs["not_a_model"], "{}")):
        args[1] = str(model)
        line = fails(name, args, capsys)
        assert expected.format(model) in line
        if model == inputs["not_a_model"]:  # a plain folder: neither a model (SFT) nor a finished stage (others)
            assert ("not a model directory (no config.json in it)" in line if name == "vrt_sft"
                    else f"{model}/manifest.json: missing" in line)
    assert not out.exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_and_bad_data_files_are_named(name, inputs, capsys):
    out = inputs["root"] / f"{name}_data"
    args = valid(name, inputs, out)
    missing = inputs["root"] / "missing.jsonl"
    args[3] = str(missing)
    line = fails(name, args, capsys)
    assert line.startswith(f"error: --data {missing}: ")
    args[3] = str(inputs["bad"])
    line = fails(name, args, capsys)
    if name == "vrt_sft":  # a .jsonl is a trace file to SFT: its first line is already no trace
        assert line.startswith(f"error: {inputs['bad']}:1 (id 'p0'): missing field(s)")
    else:
        assert line.startswith(f"error: {inputs['bad']}:3") and "JSON" in line
    assert not out.exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_output_folder_holding_another_run_is_refused(name, inputs, capsys):
    other = inputs["other_run"]
    before = sorted(p.name for p in other.iterdir())
    line = fails(name, valid(name, inputs, other), capsys)
    assert line == (f"error: --output_dir {other}: the folder holds a 'reward' run, not a '{name}' one; "
                    "choose another one")
    assert sorted(p.name for p in other.iterdir()) == before


HELP_PROBE = """
import runpy, sys, time
sys.argv = [sys.argv[1], "--help"]
started = time.perf_counter()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("SECONDS", time.perf_counter() - started, "HEAVY", sorted(m for m in ("trl", "torch", "transformers")
                                                                   if m in sys.modules))
"""


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_is_fast_and_shows_config_and_purpose(name):
    script = ROOT / "train" / f"{name}.py"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", HELP_PROBE, str(script)], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "HEAVY []" in text  # neither TRL, torch nor transformers imported to answer
    assert wall < 2.0, f"--help took {wall:.2f} s"
    purpose = SCRIPTS[name].__doc__.strip().splitlines()[0]
    assert purpose in text and "--config YAML" in text and "--model_path" in text
    if name in ("vrt_sft", "vrt_grpo_trl"):
        config = "SFTConfig" if name == "vrt_sft" else "GRPOConfig"
        assert f"Every field of TRL's {config} is accepted" in " ".join(text.split())


@pytest.mark.parametrize("name", ["vrt_sft", "vrt_grpo_trl"])
def test_a_missing_checkpoint_to_resume_is_named(name, inputs, capsys):
    out = inputs["root"] / f"{name}_resume"
    missing = inputs["root"] / "checkpoint-9"
    line = fails(name, [*valid(name, inputs, out), "--resume_from_checkpoint", str(missing)], capsys)
    assert line == f"error: --resume_from_checkpoint {missing}: no such checkpoint folder"
    assert not out.exists()


def test_an_sft_model_path_of_another_stage_is_refused(inputs, capsys):
    other = inputs["other_run"]
    line = fails("vrt_sft", [*valid("vrt_sft", inputs, inputs["root"] / "sft_other"), "--model_path", str(other)],
                 capsys)
    assert line == f"error: {other}/manifest.json: stage is 'reward', expected one of {vrt_sft.MODEL_STAGES}"


def test_debug_keeps_the_traceback(inputs):
    """With --debug the project's error is raised as it is (its traceback shown), not cut to one line."""
    from mmreward.errors import UsageError

    with pytest.raises(UsageError, match="unknown option --max_step "):
        run(vrt_grpo.main, [*valid("vrt_grpo", inputs, inputs["root"] / "debug"), "--max_step", "3", "--debug"])


@pytest.mark.parametrize("name", FROM_STAGE)
def test_a_broken_judge_config_is_named(name, inputs, capsys):
    """The starting judge's protocol file is read before anything loads; a broken one is named."""
    import shutil

    broken = inputs["root"] / f"{name}_broken_judge"
    shutil.copytree(inputs["judge"], broken)
    start_run_dir(broken)
    (broken / "vr_thinker.json").write_text("{}")
    finalize_run_dir(broken, "vrt_sft", inputs={}, metrics={})  # checksummed as it is: only its content is wrong
    args = valid(name, inputs, inputs["root"] / f"{name}_broken_out")
    args[1] = str(broken)
    line = fails(name, args, capsys)
    assert line.startswith(f"error: {broken}/vr_thinker.json: not a valid judge config")
    assert not (inputs["root"] / f"{name}_broken_out").exists()
