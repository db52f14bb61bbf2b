"""What the VR-Thinker stage scripts share: required settings, record files, the input judge, LoRA fields."""

import pytest

from mmreward.backbones.vlm import LoRASettings
from mmreward.errors import MissingInputError, UsageError
from mmreward.manifest import RunDirError, finalize_run_dir, start_run_dir
from vr_thinker.judge import save_judge_config
from vr_thinker.presets import load_preset
from vr_thinker.stage_io import (
    LoRAArguments,
    PresetArguments,
    eval_record_file,
    protocol_summary,
    read_judge_input,
    record_file,
    require_settings,
)


def test_require_settings_names_every_missing_one():
    require_settings(model_path="m", data="d")
    with pytest.raises(UsageError, match=r"^missing required setting\(s\): --model_path, --output_dir$"):
        require_settings(model_path="", data="d", output_dir=None)


def test_record_file_and_eval_record_file(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "train.jsonl").write_text("")
    (tmp_path / "videos" / "val.jsonl").write_text("")
    assert record_file(str(tmp_path), "train") == tmp_path / "videos" / "train.jsonl"
    assert record_file(str(tmp_path / "videos" / "val.jsonl"), "ignored") == tmp_path / "videos" / "val.jsonl"
    with pytest.raises(MissingInputError, match="^--data .*: no record file .*test.jsonl"):
        record_file(str(tmp_path), "test")
    assert eval_record_file(0, None, str(tmp_path), "val") is None
    assert eval_record_file(2, None, str(tmp_path), "val") == tmp_path / "videos" / "val.jsonl"
    (tmp_path / "other.jsonl").write_text("")
    assert eval_record_file(2, str(tmp_path / "other.jsonl"), str(tmp_path), "val").name == "other.jsonl"
    with pytest.raises(MissingInputError, match="^--eval_records .*missing.jsonl: no such file"):
        eval_record_file(2, str(tmp_path / "missing.jsonl"), str(tmp_path), "val")
    with pytest.raises(UsageError, match="--eval_pairs needs --eval_records"):
        eval_record_file(2, None, str(tmp_path), "test")


def test_read_judge_input_checks_the_stage_and_the_judge_config(tmp_path):
    run = tmp_path / "sft"
    start_run_dir(run)
    (run / "weights.bin").write_bytes(b"w")
    finalize_run_dir(run, "vrt_sft", inputs={}, metrics={})
    with pytest.raises(MissingInputError, match="^--model_path .*: no vr_thinker.json"):
        read_judge_input(str(run), ("vrt_sft",))
    with pytest.raises(MissingInputError, match="^--model_path .*nowhere: no such directory"):
        read_judge_input(str(tmp_path / "nowhere"), ("vrt_sft",))
    with pytest.raises(RunDirError):
        read_judge_input(str(run), ("vrt_grpo",))

    judged = tmp_path / "judged"
    start_run_dir(judged)
    preset = load_preset("vr-thinker", ["frames.per_video=8"])
    dims = preset.dimensions()[:1]
    save_judge_config(judged, preset, dims)
    finalize_run_dir(judged, "vrt_grpo", inputs={}, metrics={})
    manifest, loaded, loaded_dims = read_judge_input(str(judged), ("vrt_sft", "vrt_grpo"))
    assert manifest["stage"] == "vrt_grpo" and loaded == preset and loaded_dims == dims
    assert protocol_summary(loaded, loaded_dims) == {"preset": "vr-thinker", "preset_overrides": ["frames.per_video=8"],
                                                     "dimensions": ["TA"], "checkpoint": "qunwang13/vr-thinker"}


def test_preset_arguments_resolve_or_stop():
    preset, dims = PresetArguments(preset="vrthinker", dimensions="mjbench_video").protocol()
    assert preset.name == "vrthinker" and dims[0].label == "Alignment"
    with pytest.raises(UsageError, match="--preset vr-thinker.*no dimension set 'x'"):
        PresetArguments(dimensions="x").protocol()
    with pytest.raises(UsageError, match="has no such field"):
        PresetArguments(preset_overrides=["frames.x=1"]).protocol()


def test_lora_arguments():
    assert LoRAArguments().lora() is None
    assert LoRAArguments(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1).lora() == LoRASettings(
        r=4, alpha=8, dropout=0.1)
