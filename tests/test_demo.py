"""The end-to-end demo as `make demo` runs it (minutes on CPU, so `slow`), and its progress readers (fast)."""

import html
import json
import re

import pytest

from script_loading import load_script


demo = load_script("demo/run.py")  # the demo is a script of the checkout, not a module of the library


def test_log_progress_reads_the_last_tqdm_count(tmp_path):
    log = tmp_path / "stage.log"
    assert demo.log_progress(log)() is None  # not written yet
    log.write_text("Loading weights: 100%|##| 57/57 [00:00<00:00]\n")
    assert demo.log_progress(log)() == (57, 57)
    with log.open("a") as handle:
        handle.write("  3%|#  | 18/600 [00:09<04:51,  2.0it/s]\r  3%|#  | 19/600 [00:10<04:50,  2.0it/s]")
    assert demo.log_progress(log)() == (19, 600)


def test_train_log_progress_reads_the_last_step(tmp_path):
    path = tmp_path / "train_log.jsonl"
    assert demo.train_log_progress(path, 10)() is None
    path.write_text(json.dumps({"step": 0, "eval/reward": 0.1}) + "\n" + json.dumps({"step": 3, "loss": 1.0}) + "\n")
    assert demo.train_log_progress(path, 10)() == (3, 10)
    with path.open("a") as handle:
        handle.write('{"step": 4, "lo')  # a line being written is not read
    assert demo.train_log_progress(path, 10)() == (3, 10)


def test_line_count_progress_counts_complete_lines_of_all_shards(tmp_path):
    assert demo.line_count_progress(tmp_path / "shards", "shard-*.jsonl", 16)() == (0, 16)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-00000-of-00002.jsonl").write_text("{}\n{}\n")
    (tmp_path / "shards" / "shard-00001-of-00002.jsonl").write_text("{}\n{\"cut")
    (tmp_path / "shards" / "settings.json").write_text("{}\n")
    assert demo.line_count_progress(tmp_path / "shards", "shard-*.jsonl", 16)() == (3, 16)


def test_check_same_pairs_refuses_other_pairs(tmp_path):
    def write(name: str, rows: list[tuple[str, str, str]]):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": i, "prompt": p, "label": {"overall": o}, "a": {}, "b": {}}) + "\n"
                                for i, p, o in rows))
        return path

    reference = write("main.jsonl", [("p0", "one red circle", "a"), ("p1", "two blue squares", "tie")])
    same = [("p0", "one red circle", "a"), ("p1", "two blue squares", "tie")]
    demo.check_same_pairs(reference, write("same.jsonl", same))
    for name, rows in {"label.jsonl": [("p0", "one red circle", "a"), ("p1", "two blue squares", "b")],
                       "fewer.jsonl": [("p0", "one red circle", "a")],
                       "order.jsonl": [("p1", "two blue squares", "tie"), ("p0", "one red circle", "a")]}.items():
        with pytest.raises(RuntimeError, match=name):
            demo.check_same_pairs(reference, write(name, rows))


def test_main_times_each_step_and_leaves_out_vr_thinker_when_asked(tmp_path, monkeypatch, capsys):
    ran = []

    def fake(name):
        def step(ctx):
            ran.append(name)
            ctx.report.heading(name)
        return step

    monkeypatch.setattr(demo, "step_vr_thinker", fake("vr_thinker"))
    monkeypatch.setattr(demo, "STEPS", [("data", fake("data")), ("VR-Thinker chain", demo.step_vr_thinker)])
    report = html.unescape(demo.main(["--out", str(tmp_path / "off"), "--vr-thinker", "off"]).read_text())
    assert ran == ["data"]
    timings = _table_after(report, "Timings")
    assert "<td>data</td>" in timings and "<td>total</td>" in timings and "VR-Thinker" not in timings
    demo.main(["--out", str(tmp_path / "demo")])
    assert ran == ["data", "data", "vr_thinker"]
    assert "VR-Thinker chain: 0 s wall, 0 s CPU" in capsys.readouterr().out


def test_background_stages_run_in_order_and_hand_over_a_failure(tmp_path):
    scenes = tmp_path / "scenes"
    chain = demo.BackgroundStages([
        ("eval/humanoid_scenes.py", ["--output_dir", str(scenes), "--poses", "standing", "--repeats", "1",
                                     "--render_size", "32"], tmp_path / "logs" / "scenes.log"),
        ("eval/humanoid_scenes.py", ["--no_such_flag", "1"], tmp_path / "logs" / "bad.log"),
        ("eval/humanoid_scenes.py", ["--output_dir", str(tmp_path / "never")], tmp_path / "logs" / "never.log"),
    ])
    with pytest.raises(RuntimeError, match="a background stage failed: eval/humanoid_scenes.py failed"):
        chain.wait()
    assert (scenes / "scenes.png").is_file() and json.loads((scenes / "scenes.json").read_text())["rows"]
    assert not (tmp_path / "logs" / "never.log").exists()  # nothing runs after a failed stage
    assert chain.seconds > 0


def test_stopping_background_stages_kills_the_running_stage(tmp_path):
    chain = demo.BackgroundStages([("train/standin_clip.py", ["--output_dir", str(tmp_path / "standin")],
                               tmp_path / "standin.log")])
    chain.stop()
    assert isinstance(chain.error, RuntimeError) and "stopped before it finished" in str(chain.error)
    assert not (tmp_path / "standin" / "manifest.json").exists()


def _table_after(report: str, heading: str) -> str:
    """The first table following `heading` in the report."""
    start = report.index(heading)
    return report[report.index("<table>", start): report.index("</table>", start)]


@pytest.mark.slow
def test_demo_writes_a_report_with_every_section(tmp_path):
    out = tmp_path / "demo"
    demo.main(["--out", str(out)])
    check_report(out)


def check_report(out):
    """What `make demo` promises in `out/report.html` (separate so a finished demo folder can be checked)."""
    report = html.unescape((out / "report.html").read_text())
    for section in ("Synthetic preference data", "BaseReward", "RewardDance",
                    "VR-Thinker: SFT -> rejection sampling -> SFT -> GRPO",
                    "Evaluation on the held-out synthetic video pairs", "VLM-RM", "Timings"):
        assert section in report
    assert "train/vr_thinker.sh" in report  # the short chain points to the full one

    # One table compares every reward model on the same held-out video pairs.
    comparison = _table_after(report, "Evaluation on the held-out synthetic video pairs")
    for model in ("basereward_video", "rewarddance_video", "vr_thinker", "clip_baseline"):
        assert f"<td>{model}</td>" in comparison
    for model in ("basereward_video", "vr_thinker", "clip_baseline"):  # every model on all 64 held-out pairs
        assert json.loads((out / "eval" / model / "metrics.json").read_text())["counts"]["scored"] == 64

    # Stage-by-stage VR-Thinker table, from the stage manifests of this run.
    stages = _table_after(report, "VR-Thinker: SFT -> rejection sampling")
    for row in ("sft (before)", "sft (after)", "rejection sampling", "grpo (start)", "grpo (end)"):
        assert f"<td>{row}</td>" in stages
    rejection = json.loads((out / "vr_thinker" / "rejection" / "manifest.json").read_text())["metrics"]
    assert f"<td>{rejection['samples']}</td>" in stages
    assert ("<td>sft2 (after)</td>" in stages) == (rejection["kept_traces"] > 0)

    # Curves and an example trace with the frames selected, embedded from the run's own files.
    for png in ("basereward_loss.png", "rewarddance_loss.png", "vr_thinker_sft_loss.png",
                "vr_thinker_grpo_reward.png"):
        assert (out / "assets" / png).is_file()
        assert f"assets/{png}" in report
    assert "vr_thinker/grpo/example_trace.html" in report
    teacher = (out / "vr_thinker" / "sft" / "example_trace.html").read_text()
    assert "vr_thinker/sft/example_trace.html" in report
    assert "Initial frames" in teacher and re.search(r"\d+ \(Video 1\)", teacher) and "vr-thinker" in teacher

    # VLM-RM: both scenes, the stand-in CLIP (said plainly not to be zero-shot) with its per-task AUC / EPIC
    # table, the reward curves of the alpha sweep, the SAC run driven by it.
    assert "NOT a zero-shot reward model" in report
    per_task = _table_after(report, "Per paper task")
    for task in ("kneeling", "lotus", "standing", "arms_raised", "splits", "hands_on_hips", "one_leg", "arms_crossed"):
        assert f"<td>{task}</td>" in per_task
    assert "AUC a=0" in per_task and "EPIC a=1" in per_task
    for png in ("vlm_rm/scenes/scenes.png", "vlm_rm/reward_curves/reward_curves.png", "humanoid_sac/reward_curve.png"):
        assert f"src='{png}'" in report and (out / png).is_file()
    sac = json.loads((out / "humanoid_sac" / "manifest.json").read_text())
    assert "NOT zero-shot" in sac["clip_note"] and not sac["metrics"]["clip_random_weights"]

    # The humanoid video and the per-step timings.
    video = re.search(r"<video src='([^']+)'", report)
    assert video and (out / video.group(1)).is_file()
    timings = _table_after(report, "Timings")
    for step in ("VLM-RM chain started in the background", "BaseReward training", "VR-Thinker chain", "evaluation",
                 "humanoid SAC with a CLIP reward", "total"):
        assert f"<td>{step}</td>" in timings
    assert (out / "basereward_video" / "manifest.json").exists()
    assert (out / "eval" / "clip_baseline" / "metrics.json").exists()
