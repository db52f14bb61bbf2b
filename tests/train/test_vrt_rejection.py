"""Rejection sampling end to end: kept traces are right and replayable, statistics add up, shards resume."""

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from mmreward.errors import UsageError
from mmreward.manifest import read_manifest, start_run_dir
from vr_thinker.cold_start import read_traces
from vr_thinker.rollout import HFRolloutEngine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vrt_rejection as stage  # noqa: E402  (train/vrt_rejection.py, the script under test)
import vrt_sft  # noqa: E402  (the next stage reads the output)
from stage_helpers import run_ddp, subprocess_env  # noqa: E402
from vrt_tiny_judge import synthetic_videos, tiny_judge  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_videos(tmp_path_factory.mktemp("synthetic"), train=4, val=0)


@pytest.fixture(scope="module")
def judge(tmp_path_factory, data):
    return tiny_judge(tmp_path_factory.mktemp("judge") / "sft", data / "videos" / "train.jsonl")


def _args(judge, data, out, *extra):
    return ["--model_path", str(judge), "--data", str(data), "--output_dir", str(out), "--samples_per_pair", "6",
            "--pairs_per_batch", "2", "--max_new_tokens", "64", "--use_cpu", "true", "--torch_threads", "1",
            "--seed", "3", "--dtype", "float32", *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, judge, data):
    """The plain run; what it printed is kept next to its folder (console.txt: stderr, then stdout)."""
    out = tmp_path_factory.mktemp("rejection") / "straight"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        metrics = stage.main(_args(judge, data, out))
    (out.parent / "console.txt").write_text(stderr.getvalue() + stdout.getvalue())
    return out, metrics


def test_progress_lines_and_the_closing_summary(straight):
    """Not a terminal here: a plain line per batch of pairs (with the acceptance so far), and a last line naming the
    kept traces' file and the acceptance rate."""
    out, metrics = straight
    lines = (out.parent / "console.txt").read_text().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/4", "4/4"]  # 4 pairs, 2 per batch
    assert all(" accepted " in line for line in steps)
    assert lines[-1] == (f"done: {metrics['samples']} samples of 4 pairs, {metrics['acceptance_rate']:.1%} accepted, "
                         f"format-valid {metrics['format_valid_rate']:.1%}; {metrics['kept_traces']} kept traces in "
                         f"{out / 'traces.jsonl'} (train on them with train/vrt_sft.py --data {out})")


def test_kept_traces_are_right_and_feed_the_next_sft(straight, data):
    out, metrics = straight
    manifest = read_manifest(out, expect_stage="vrt_rejection")
    assert manifest["inputs"]["model_stage"] == "vrt_sft"
    assert metrics["pairs"] == 4 and metrics["samples"] == 24
    # the tiny judge answers in format with random verdicts: some samples are kept, not all
    assert 0 < metrics["accepted_samples"] < metrics["samples"]
    # replaying every kept trace through the environment: valid episodes whose verdicts match the label
    traces = read_traces(out / stage.TRACES_NAME, require_correct=True)
    assert len(traces) == metrics["kept_traces"] > 0
    by_pair = {}
    for trace in traces:
        by_pair.setdefault(trace.id.split("#")[0], []).append(tuple(trace.turns))
    assert all(len(set(texts)) == len(texts) for texts in by_pair.values())  # distinct traces per pair
    assert all(t.preset.frames.per_video == 4 and t.dimensions == () for t in traces)
    assert manifest["inputs"]["protocol"]["preset"] == "vr-thinker" and manifest["inputs"]["protocol"]["dimensions"] == []
    # the next SFT stage takes the directory as its data
    loaded, source = vrt_sft.load_traces(vrt_sft.VRTSFTArguments(data=str(out)))
    assert len(loaded) == len(traces) and source["stage"] == "vrt_rejection"


def test_statistics_add_up(straight):
    out, metrics = straight
    lines = [line for p in sorted((out / "shards").glob("shard-*.jsonl")) for line in stage.read_shard(p)]
    samples = [s for line in lines for s in line["samples"]]
    assert len(samples) == metrics["samples"]
    assert metrics["acceptance_rate"] == pytest.approx(sum(s["kept"] for s in samples) / 24)
    assert metrics["verdict_accuracy"]["OA"] == pytest.approx(sum(s["right"]["OA"] for s in samples) / 24)
    assert metrics["acceptance_rate"] <= metrics["verdict_accuracy"]["OA"]
    assert metrics["acceptance_rate"] <= metrics["format_valid_rate"]
    assert sum(metrics["tool_calls_per_trace"].values()) == 24 == sum(metrics["statuses"].values())
    assert sum(metrics["tool_calls_per_kept_trace"].values()) == metrics["kept_traces"]
    by_varies = metrics["acceptance_by_varied_dimension"]
    assert by_varies and all(0.0 <= v <= 1.0 for v in by_varies.values())
    assert set(by_varies) <= {"VQ", "MQ", "TA", "none", "MQ+TA", "MQ+VQ", "TA+VQ"}


def test_resume_skips_done_pairs_and_ends_with_the_same_output(straight, judge, data, tmp_path, monkeypatch):
    """A run killed after its first batch (a half-written line after it) redoes only what is missing."""
    out, _ = straight
    shard = next((out / "shards").glob("shard-*.jsonl"))
    complete = shard.read_text().splitlines(keepends=True)
    resumed = tmp_path / "resumed"
    start_run_dir(resumed, stage.STAGE)  # what the killed run left: its marker and a shard with a cut last line
    (resumed / "shards").mkdir(parents=True)
    (resumed / "shards" / shard.name).write_text("".join(complete[:2]) + complete[2][: len(complete[2]) // 2])
    rolled = []
    original = HFRolloutEngine.rollout

    def counting(self, envs, *args, **kwargs):
        rolled.append(len(envs))
        return original(self, envs, *args, **kwargs)

    monkeypatch.setattr(HFRolloutEngine, "rollout", counting)
    metrics = stage.main(_args(judge, data, resumed))
    assert rolled == [2 * 6]  # only the second batch (pairs 3 and 4) was sampled again
    assert metrics["pairs_sampled_by_this_run"] == 2
    assert (resumed / stage.TRACES_NAME).read_text() == (out / stage.TRACES_NAME).read_text()
    assert stage.read_shard(resumed / "shards" / shard.name) == stage.read_shard(shard)


def test_refuses_to_resume_shards_sampled_otherwise(straight, judge, data, tmp_path):
    import shutil

    out = tmp_path / "other"
    shutil.copytree(straight[0] / "shards", out / "shards")
    with pytest.raises(UsageError, match="samples_per_pair"):
        stage.main(_args(judge, data, out, "--samples_per_pair", "3"))


def test_shards_split_pairs_and_seeds_follow_the_pair():
    records = [type("R", (), {"id": f"p{i}"})() for i in range(7)]
    shards = [stage.my_batches(records, rank, 3, 2) for rank in range(3)]
    assert [[[r.id for r in b] for b in s] for s in shards] == [
        [["p0", "p3"], ["p6"]], [["p1", "p4"]], [["p2", "p5"]]]
    # Sample j of a pair has the same seed in any batch; other pairs, samples and base seeds get other seeds.
    together = stage.pair_seeds(0, [records[0], records[3]], 2)
    assert together == stage.pair_seeds(0, [records[0]], 2) + stage.pair_seeds(0, [records[3]], 2)
    assert len(set(together)) == 4 and stage.pair_seeds(1, [records[0]], 2) != together[:2]


def test_read_shard_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n" + '{"id": "c", "sam')
    assert [line["id"] for line in stage.read_shard(path)] == ["a", "b"]
    assert path.read_text().count("\n") == 2 and "sam" in path.read_text()  # left alone without repair
    stage.read_shard(path, repair=True)
    assert path.read_text() == json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n"


@pytest.mark.slow
def test_two_processes_shard_the_pairs(judge, data, tmp_path):
    out = tmp_path / "ddp"
    run_ddp(_args(judge, data, out), script=ROOT / "train" / "vrt_rejection.py")
    metrics = read_manifest(out, expect_stage="vrt_rejection")["metrics"]
    assert metrics["num_processes"] == 2 and metrics["pairs"] == 4 and metrics["samples"] == 24
    shards = sorted((out / "shards").glob("shard-*.jsonl"))
    assert [p.name for p in shards] == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    assert [[line["id"] for line in stage.read_shard(p)] for p in shards] == [
        ["vid-train-000000", "vid-train-000002"], ["vid-train-000001", "vid-train-000003"]]


def test_sigkill_mid_run_then_rerun_ends_with_the_uninterrupted_output(straight, judge, data, tmp_path):
    """A real SIGKILL at a random moment after the first pair's lines are flushed: the rerun samples only the
    missing pairs, every pair id ends up in the shards exactly once, and the kept traces equal an uninterrupted
    run's. One pair per batch here (two in the uninterrupted run): seeds follow the pair, not its batch, and
    three batches still to go leave the kill a wide window even when a loaded machine is slow to poll."""
    import random
    import signal
    import subprocess
    import time

    killed = tmp_path / "killed"
    args = _args(judge, data, killed, "--pairs_per_batch", "1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train" / "vrt_rejection.py"), *args],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while len(stage.done_ids(killed)) < 1:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no finished batch within 300 s"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    assert (killed / "INCOMPLETE").exists() and not (killed / "manifest.json").exists()
    done = stage.done_ids(killed)
    assert 1 <= len(done) < 4, done

    metrics = stage.main(args)
    assert metrics["pairs_sampled_by_this_run"] == 4 - len(done) and metrics["pairs"] == 4
    ids = [line["id"] for p in sorted((killed / "shards").glob("shard-*.jsonl")) for line in stage.read_shard(p)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4  # nothing lost, nothing duplicated
    assert (killed / stage.TRACES_NAME).read_text() == (straight[0] / stage.TRACES_NAME).read_text()
    assert read_manifest(killed, expect_stage="vrt_rejection")["metrics"]["samples"] == 24


def test_refuses_an_unfinished_or_edited_model_dir(judge, data, tmp_path):
    """The input judge must be a finished stage directory whose files match its manifest checksums."""
    import shutil

    from mmreward.manifest import RunDirError

    unfinished = shutil.copytree(judge, tmp_path / "unfinished")
    (unfinished / "INCOMPLETE").write_text("started\n")
    with pytest.raises(RunDirError, match="did not finish"):
        stage.main(_args(unfinished, data, tmp_path / "out1"))
    edited = shutil.copytree(judge, tmp_path / "edited")
    with (edited / "model.safetensors").open("r+b") as handle:
        handle.truncate((edited / "model.safetensors").stat().st_size - 8)
    with pytest.raises(RunDirError, match="model.safetensors: checksum differs"):
        stage.main(_args(edited, data, tmp_path / "out2"))
