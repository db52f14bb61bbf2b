
import pytest

from mmreward.manifest import (
    INCOMPLETE_MARKER,
    RunDirError,
    finalize_run_dir,
    read_manifest,
    start_run_dir,
)


def _finished_run(tmp_path):
    run = start_run_dir(tmp_path / "run")
    (run / "model.safetensors").write_bytes(b"weights-v1")
    (run / "config.json").write_text('{"a": 1}')
    finalize_run_dir(run, stage="reward", inputs={"data": "x.jsonl"}, metrics={"acc": 0.9})
    return run


def test_finished_run_reads_back_with_checksums(tmp_path):
    run = _finished_run(tmp_path)
    manifest = read_manifest(run, expect_stage="reward")
    assert manifest["metrics"] == {"acc": 0.9}
    assert set(manifest["checksums"]) == {"model.safetensors", "config.json"}
    assert not (run / INCOMPLETE_MARKER).exists()


def test_incomplete_run_is_refused(tmp_path):
    run = start_run_dir(tmp_path / "run")
    with pytest.raises(RunDirError, match="did not finish"):
        read_manifest(run)


def test_edited_or_truncated_weights_are_detected(tmp_path):
    run = _finished_run(tmp_path)
    (run / "model.safetensors").write_bytes(b"weights-v")
    with pytest.raises(RunDirError, match="model.safetensors: checksum differs"):
        read_manifest(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(RunDirError, match="missing"):
        read_manifest(run)


def test_wrong_stage_and_missing_manifest(tmp_path):
    run = _finished_run(tmp_path)
    with pytest.raises(RunDirError, match="expected one of"):
        read_manifest(run, expect_stage="vrt_sft")
    (run / "manifest.json").unlink()
    with pytest.raises(RunDirError, match="missing"):
        read_manifest(run)


def test_restarting_a_run_removes_the_old_manifest(tmp_path):
    run = _finished_run(tmp_path)
    start_run_dir(run)
    assert not (run / "manifest.json").exists()
    with pytest.raises(RunDirError):
        read_manifest(run)
    # a manifest that is not JSON is named
    finalize_run_dir(run, stage="reward")
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        read_manifest(run)
