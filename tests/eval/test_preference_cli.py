"""eval/preference.py end to end: outputs, benchmarks, scorer choice, SIGKILL + resume, 2 processes."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from accelerate import PartialState
from PIL import Image

from mmreward.data.records import read_records
from mmreward.evaluation.runner import SHARD_DIR, RunConfigError, load_predictions
from mmreward.manifest import INCOMPLETE_MARKER, RunDirError, read_manifest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "eval" / "preference.py"
TOY = REPO / "tests" / "evaluation" / "toy_scorer.py"
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


preference = _load("preference_cli", SCRIPT)
toy = _load("toy_scorer", TOY)
stage_helpers = _load("stage_helpers", REPO / "tests" / "train" / "stage_helpers.py")  # the DDP launch command


@pytest.fixture(scope="module")
def state():
    return PartialState(cpu=True)


def _args(data, out, *extra, scorer=f"{TOY}:build"):
    return ["--model", "none", "--data", str(data), "--out", str(out), "--scorer", scorer,
            "--n_bootstrap", "50", "--progress", "false", *extra]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def test_outputs_manifest_config_and_media_failure(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 10, corrupt=[4])
    config = tmp_path / "x.yaml"
    config.write_text("batch_size: 3\nn_bootstrap: 40\ntitle: toy run\n")
    metrics = preference.main(["--config", str(config), *_args(data, tmp_path / "out")], state=state)
    out = tmp_path / "out"
    assert metrics["counts"] == {"pairs": 10, "scored": 9, "errors": 1, "errors_by_type": {"MediaError": 1},
                                 "unanswered": 0}
    assert metrics["n_bootstrap"] == 50  # the command line wins over the config file
    # Every labelled pair is right for the toy scorer (its labels follow the toy score).
    assert metrics["dimensions"]["overall"]["accuracy"]["estimate"] == 1.0
    manifest = read_manifest(out, expect_stage="eval_preference")
    assert manifest["metrics"]["overall/accuracy"] == 1.0 and manifest["args"]["batch_size"] == 3
    assert not (out / INCOMPLETE_MARKER).exists()
    assert (out / "summary.md").read_text().startswith("# toy run")
    assert "MediaError" in (out / "report.html").read_text()
    assert {r["id"] for r in load_predictions(out)} == {r.id for r in read_records(data)}


def test_another_evaluations_folder_is_left_alone(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 4)
    out = tmp_path / "out"
    preference.main(_args(data, out), state=state)
    with pytest.raises(RunConfigError, match=r"differs in \['limit'\]"):
        preference.main(_args(data, out, "--limit", "2"), state=state)
    read_manifest(out, expect_stage="eval_preference")  # still finished and intact
    preference.main(_args(data, out, "--limit", "2", "--overwrite", "true"), state=state)
    assert [r["id"] for r in load_predictions(out)] == ["p000", "p001"]


def test_benchmark_spec_uses_the_reader(tmp_path, state):
    src = FIXTURES / "videogen_rewardbench" / "videogen-rewardbench.csv"
    metrics = preference.main(_args(f"videogen_rewardbench:{src}", tmp_path / "out"), state=state)
    rows = load_predictions(tmp_path / "out")
    assert [r["id"] for r in rows] == ["videogen-0", "videogen-1", "videogen-2"]
    assert rows[0]["labels"] == {"VQ": 1, "MQ": 1, "TA": 0, "overall": 1}
    assert metrics["counts"]["scored"] == 3
    with pytest.raises(FileNotFoundError, match="NAME:SRC"):
        preference.main(_args(tmp_path / "missing.jsonl", tmp_path / "o2"), state=state)


def test_missing_media_stop_the_run_before_scoring(tmp_path, state, capsys):
    """MJ-Bench-Video's paths (test/0_0.mp4) resolve in videos/ with no flag; a missing file stops the
    run at once with the count and the first few, before any scorer is built or a pair is scored."""
    import shutil

    root = tmp_path / "mjv"
    shutil.copytree(FIXTURES / "mjbench_video", root)
    scorer = tmp_path / "never.py"
    scorer.write_text("def build(args, device):\n    raise AssertionError('the scorer must not be built')\n")
    (root / "videos/test/0_1.mp4").unlink()
    with pytest.raises(FileNotFoundError) as info:
        preference.main(_args(f"mjbench_video:{root / 'test.json'}", tmp_path / "out", scorer=f"{scorer}:build"),
                        state=state)
    assert str(info.value).startswith("1 of the 2 media files the records name do not exist; first 1: "
                                      f"id 'mjbench-video-0' b.video {root.resolve() / 'videos/test/0_1.mp4'}")
    assert not (tmp_path / "out").exists()
    assert "2 overall and 5 other labels are missing" in capsys.readouterr().err
    # With the file back, the same command scores every item (the default media root is videos/).
    shutil.copy(FIXTURES / "mjbench_video/videos/test/0_1.mp4", root / "videos/test/0_1.mp4")
    metrics = preference.main(_args(f"mjbench_video:{root / 'test.json'}", tmp_path / "out2"), state=state)
    assert metrics["counts"]["scored"] == 4 and metrics["dimensions"]["overall"]["pairs"] == 2


def test_scorer_choice_and_model_dir_checks(tmp_path, state):
    from mmreward.backbones.clip import build_tiny_clip
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic

    syn = tmp_path / "syn"
    generate_synthetic(syn, seed=0, config=SyntheticConfig(image_splits=SplitSizes(1, 1, 4), video_splits=SplitSizes(1, 1, 1)))
    clip = build_tiny_clip(tmp_path / "clip")
    data = syn / "images" / "test.jsonl"
    metrics = preference.main(_args(data, tmp_path / "out", "--clip_dimensions", "TA", "--model", str(clip),
                                    scorer="auto"), state=state)
    assert set(metrics["dimensions"]) == {"overall", "TA"}
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["scorer"]["name"] == "clip"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot tell what it is"):
        preference.main(_args(data, tmp_path / "o2", "--model", str(empty), scorer="auto"), state=state)
    (empty / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(RunDirError, match="did not finish"):
        preference.main(_args(data, tmp_path / "o3", "--model", str(empty), scorer="auto"), state=state)
    with pytest.raises(ValueError, match="unknown; known judges"):
        preference.main(_args(data, tmp_path / "o4", "--judge", "nope", scorer="auto"), state=state)
    # A factory whose scorer predates `collate` / `costs` is refused with what it lacks.
    factory = tmp_path / "old_scorer.py"
    factory.write_text("class Old:\n    name = 'old'\n    def describe(self): return {}\n"
                       "    def cost(self, r): return 0.0\n    def prepare(self, r): return r\n"
                       "    def score(self, items): return []\n\ndef build(args, device):\n    return Old()\n")
    with pytest.raises(TypeError, match=r"without \['costs', 'collate'\]"):
        preference.main(_args(data, tmp_path / "o5", scorer=f"{factory}:build"), state=state)


def _run_cli(args, env, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_sigkill_then_rerun_gives_every_id_once(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 24)
    out = tmp_path / "out"
    shard = out / SHARD_DIR / "part-00000.jsonl"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *_args(data, out, "--batch_size", "2")], cwd=REPO,
                            env=_env(TOY_SLEEP="0.4"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not shard.exists() or shard.read_text().count("\n") < 6):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    streamed = shard.read_text().count("\n")
    assert 6 <= streamed < 24, "the kill must land mid-run"

    result = _run_cli(_args(data, out, "--batch_size", "2"), _env())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = load_predictions(out)
    assert [r["id"] for r in rows] == [r.id for r in read_records(data)]  # none missing, none twice
    preference.main(_args(data, tmp_path / "clean", "--batch_size", "2"), state=state)
    assert rows == load_predictions(tmp_path / "clean")
    assert json.loads((out / "metrics.json").read_text())["info"]["pairs scored in this run"] == 24 - streamed


def test_two_processes_give_the_same_predictions_as_one(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 20, corrupt=[7])
    preference.main(_args(data, tmp_path / "one", "--batch_size", "3"), state=state)
    logs = tmp_path / "logs"
    logs.mkdir()
    command = stage_helpers.ddp_command(_args(data, tmp_path / "two", "--batch_size", "3", "--cpu", "true"),
                                        num_processes=2, script=SCRIPT)
    result = subprocess.run(command, cwd=REPO, env=_env(TOY_LOG_DIR=str(logs)), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_predictions(tmp_path / "two") == load_predictions(tmp_path / "one")
    per_process = [set(p.read_text().split()) for p in logs.iterdir()]
    assert len(per_process) == 2 and all(per_process)  # both processes scored pairs...
    assert not per_process[0] & per_process[1]  # ...and no pair twice
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["info"]["processes"] == 2


# ------------------------------------------------------------------------------------ compare / master key

compare = _load("compare_cli", REPO / "eval" / "compare.py")
master_key = _load("master_key_cli", REPO / "eval" / "master_key.py")


def test_compare_puts_runs_side_by_side(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 8)
    preference.main(_args(data, tmp_path / "full"), state=state)
    preference.main(_args(data, tmp_path / "part", "--limit", "4"), state=state)
    md = compare.main([str(tmp_path / "full"), str(tmp_path / "part"), "--names", "all", "first4",
                       "--out", str(tmp_path / "cmp")])
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert header.split(" | ")[:6] == ["| run", "data", "pairs", "failed", "overall w/o ties", "overall w/ ties"]
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| all", "| first4"))]
    assert [r[2] for r in rows] == ["8", "4"]
    assert rows[0][4].startswith("100.00 [")
    assert (tmp_path / "cmp" / "assets" / "overall.png").read_bytes()[:4] == b"\x89PNG"
    assert "first4" in (tmp_path / "cmp" / "report.html").read_text()
    (tmp_path / "part" / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(RunDirError):
        compare.main([str(tmp_path / "full"), str(tmp_path / "part"), "--out", str(tmp_path / "cmp2")])


def test_master_key_false_positive_rates_exact(tmp_path, state):
    data = toy.write_toy_records(tmp_path / "data", 12)
    records = list(read_records(data))
    keys = [":", "Thought process:"]
    refs = [(r, r.a if r.label["overall"] == "a" else r.b) for r in records if r.label["overall"] != "tie"]
    # Toy score: pixel mean + len(response) / 10; the key keeps the reference's image.
    m = master_key.main(_args(data, tmp_path / "pair", "--keys", *keys), state=state)
    for key in keys:
        expected = sum(len(key) > len(ref.response) for _, ref in refs) / len(refs)
        assert m["keys"][key]["pairs"] == len(refs)
        assert m["keys"][key]["false_positive_rate"]["estimate"] == pytest.approx(expected)
    assert m["keys"]["Thought process:"]["false_positive_rate"]["estimate"] == 1.0  # longer than every reference

    m = master_key.main(_args(data, tmp_path / "point", "--keys", ":", "--criterion", "pointwise",
                              "--threshold", "0.6"), state=state)
    def grey(path):
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float64).mean() / 255

    # Pointwise: the key's own toy score, grey level + len(":") / 10, against the threshold.
    expected = sum(grey(ref.image) + 0.1 > 0.6 for _, ref in refs) / len(refs)
    assert m["keys"][":"]["false_positive_rate"]["estimate"] == pytest.approx(expected)
    assert 0 < expected < 1  # the threshold splits the probes, so the check can fail
    assert read_manifest(tmp_path / "point", expect_stage="eval_master_key")
    assert "':'" in (tmp_path / "point" / "master_key.md").read_text()


def test_master_key_needs_text_responses():
    from mmreward.data.records import PreferenceRecord, Side

    video_only = PreferenceRecord("v", "p", Side(video=Path("a.mp4")), Side(video=Path("b.mp4")), {"overall": "a"})
    with pytest.raises(ValueError, match="replace text responses"):
        master_key.probe_records([video_only], [":"])


@pytest.mark.parametrize("config", sorted((REPO / "eval" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(config):
    required = ["--model", "m", "--data", "d", "--out", "o"]
    if config.name == "master_key.yaml":
        from mmreward.cli import ScriptParser

        (args,) = ScriptParser([master_key.MasterKeyArguments]).parse(["--config", str(config), *required])
        assert args.keys[4] == "Thought process:" and args.criterion in master_key.CRITERIA
    else:
        args = preference.parse_args(["--config", str(config), *required])
        assert args.batch_size >= 1 and args.model == "m"


def test_vr_thinker_judge_adapter_runs_the_real_judge(tmp_path, state):
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from mmreward.data.records import PreferenceRecord, Side
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
    from mmreward.evaluation.runner import RunnerConfig, run_predictions
    from mmreward.evaluation.scorers import JudgeScorer
    from vr_thinker.judge import VRThinkerJudge
    from vr_thinker.presets import load_preset
    from vr_thinker.rollout import SamplingConfig

    assert callable(preference._load_factory(preference.JUDGES["vr_thinker"], preference.HERE))
    adapter = _load("scorers_vrt_test", REPO / "eval" / "scorers_vrt.py")
    syn = tmp_path / "syn"
    generate_synthetic(syn, seed=0, config=SyntheticConfig(image_splits=SplitSizes(1, 1, 1), video_splits=SplitSizes(1, 1, 3)))
    records = list(read_records(syn / "videos" / "test.jsonl"))
    records[2].a.video.write_bytes(b"")  # unreadable video: a recorded MediaError
    records.append(PreferenceRecord("text", "p", Side(response="a"), Side(response="b"), {"overall": "a"}))
    records.append(PreferenceRecord("genai", "p", records[0].a, records[0].b, {"overall": "b"}))  # overall only

    model, processor = load_vlm(VLMLoadConfig(path=str(build_tiny_vlm(tmp_path / "vlm")), tool_chat_template=True))
    preset = load_preset("vr-thinker", ["frames.per_video=4", 'prompt.system="Judge."', 'prompt.first_turn="{prompt}"'])
    judge = VRThinkerJudge(model, processor, preset, None, SamplingConfig(do_sample=False, max_new_tokens=3),
                           batch_size=2)
    scorer = JudgeScorer(adapter.VRThinkerPairJudge(judge), name="vr_thinker")
    run_predictions(records, scorer, tmp_path / "out", RunnerConfig(batch_size=4), state=state)
    rows = {r["id"]: r for r in load_predictions(tmp_path / "out")}
    assert rows[records[2].id]["error"]["type"] == "MediaError"
    assert rows["text"]["error"]["type"] == "SampleError"
    assert set(rows["genai"]["delta"]) == {"overall"}  # a benchmark without dimension labels scores the overall only
    for record in records[:2]:
        row = rows[record.id]
        assert set(row["delta"]) == {"VQ", "MQ", "TA", "overall"}
        verdicts = row["extra"]["verdicts"]
        # A random 3-token answer gives no verdicts: delta 0 and every dimension unanswered.
        assert all(v is None for v in verdicts.values()) and row["extra"]["unanswered"] == ["MQ", "TA", "VQ", "overall"]
        assert all(d == 0.0 for d in row["delta"].values())
        trace = row["extra"]["trace"]
        assert trace["format_valid"] is False and len(trace["turns"]) == 1 and trace["generated_tokens"] == 3


def test_released_checkpoint_configs_run_the_judge_with_its_preset(tmp_path, state):
    """eval/configs/*_vrthinker.yaml on a checkpoint directory without vr_thinker.json (as a released one is), the
    tiny backbone standing in: the preset comes from the config, the benchmark through its reader."""
    import yaml

    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic

    syn = tmp_path / "syn"
    generate_synthetic(syn, seed=0, config=SyntheticConfig(image_splits=SplitSizes(0, 0, 0),
                                                           video_splits=SplitSizes(0, 0, 2)))
    checkpoint = build_tiny_vlm(tmp_path / "released")
    # A CPU-sized variant of the released preset (a user's preset file building on it), as the test stand-in.
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"name": "vr-thinker-cpu", "base": "vr-thinker", "frames": {"per_video": 4},
                                     "limits": {"max_new_tokens": 3}}))
    for config in ("videogen_rewardbench_vrthinker", "mjbench_video_vrthinker"):
        args = preference.parse_args(["--config", str(REPO / "eval" / "configs" / f"{config}.yaml"),
                                      "--model", str(checkpoint), "--data", str(syn / "videos" / "test.jsonl"),
                                      "--out", str(tmp_path / config), "--dtype", "float32", "--n_bootstrap", "5",
                                      "--progress", "false"])
        assert args.judge == "vr_thinker" and args.judge_preset == "vr-thinker"
        assert args.judge_dimensions in ("videogen", "mjbench_video")
        args.judge_preset = str(small)
        scorer = preference.build_scorer(args, "cpu")
        judge = scorer.judge.model
        assert judge.preset.name == "vr-thinker-cpu" and judge.preset.frames.per_video == 4
        assert judge.dimensions == judge.preset.dimensions(args.judge_dimensions)
    # The one command, end to end (metrics with and without ties; 3 tokens give no verdicts on a random model).
    metrics = preference.main(["--config", str(REPO / "eval" / "configs" / "videogen_rewardbench_vrthinker.yaml"),
                               "--model", str(checkpoint), "--data", str(syn / "videos" / "test.jsonl"),
                               "--out", str(tmp_path / "run"), "--dtype", "float32", "--n_bootstrap", "5",
                               "--progress", "false", "--judge_preset", str(small)], state=state)
    assert metrics["counts"]["pairs"] == 2 and metrics["counts"]["scored"] == 2
    assert "overall" in metrics["dimensions"]


def test_master_key_on_a_yes_token_reward_model(tmp_path, state):
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.collate import CollateConfig
    from mmreward.evaluation.scorers import MediaConfig, load_pair_media
    from mmreward.model import RewardModel

    ckpt = RewardModel.from_backbone(build_tiny_vlm(tmp_path / "vlm"), head="yes_token",
                                     dimensions=["TA"]).save_pretrained(tmp_path / "rd")
    data = toy.write_toy_records(tmp_path / "data", 6)
    m = master_key.main(["--model", str(ckpt), "--data", str(data), "--out", str(tmp_path / "mk"), "--keys", ":",
                         "Solution", "--criterion", "pointwise", "--n_bootstrap", "20", "--progress", "false"],
                        state=state)
    rows = load_predictions(tmp_path / "mk")
    refs = [r for r in read_records(data) if r.label["overall"] != "tie"]
    assert len(rows) == 2 * len(refs) and all(0 < r["score_a"]["overall"] < 1 for r in rows)
    for k, key in enumerate([":", "Solution"]):
        accepted = [r["score_a"]["overall"] > 0.5 for r in rows if r["id"].endswith(f"@key{k}")]
        assert m["keys"][key]["false_positive_rate"]["estimate"] == pytest.approx(sum(accepted) / len(accepted))
    # A probe's score is the model's P(yes) for the key as the response, with the reference's image.
    model = RewardModel.from_pretrained(ckpt)
    probe = master_key.probe_records(refs[:1], [":"])[0]
    side = load_pair_media(probe, MediaConfig()).a
    assert side.response == ":"
    inputs = model.head.encode_sides(model.processor, [probe.prompt], [side], CollateConfig())
    row = next(r for r in rows if r["id"] == probe.id)
    assert row["score_a"]["overall"] == pytest.approx(float(model.score(inputs)[0, 0]), abs=1e-5)
