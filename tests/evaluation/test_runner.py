"""Runner: batching, streaming, resume, error rows; and the three scorers on tiny models."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from accelerate import PartialState
from PIL import Image

from mmreward.data.records import PreferenceRecord, Side, read_records
from mmreward.evaluation.runner import (
    PREDICTIONS_NAME,
    SHARD_DIR,
    PredictionsError,
    RunConfigError,
    RunnerConfig,
    consolidate,
    load_predictions,
    make_batches,
    read_rows,
    run_predictions,
)
from mmreward.evaluation.scorers import (
    ClipScorer,
    JudgeScorer,
    JudgeVerdict,
    MediaConfig,
    RewardModelScorer,
    SampleError,
    load_pair_media,
    swap_record,
    verdict_to_delta,
)

_spec = importlib.util.spec_from_file_location("toy_scorer", Path(__file__).with_name("toy_scorer.py"))
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


@pytest.fixture(scope="module")
def state():
    return PartialState(cpu=True)


@pytest.fixture
def data(tmp_path):
    path = toy.write_toy_records(tmp_path / "data", 12, corrupt=[5])
    return list(read_records(path))


def _ids(rows):
    return [r["id"] for r in rows]


# ------------------------------------------------------------------------------------ batching


def test_make_batches_exact():
    costs = [5, 1, 3, 1, 9]
    assert make_batches(costs, 2) == [[1, 3], [2, 0], [4]]
    assert make_batches(costs, 2, bucket=False) == [[0, 1], [2, 3], [4]]
    # Budget 10 on (pairs x widest cost): [1,1,3] = 9; adding 5 -> 20; [5] alone; 9 with 5 -> 18.
    assert make_batches(costs, 4, max_batch_cost=10) == [[1, 3, 2], [0], [4]]
    # A single pair over the budget still gets its own batch.
    assert make_batches([50.0], 4, max_batch_cost=10) == [[0]]
    assert make_batches([], 3) == []


def test_runner_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        RunnerConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_batch_cost"):
        RunnerConfig(max_batch_cost=0)


# ------------------------------------------------------------------------------------ runs


def test_run_scores_every_pair_once_with_exact_values(tmp_path, data, state):
    scorer = toy.ToyScorer()
    stats = run_predictions(data, scorer, tmp_path / "out", RunnerConfig(batch_size=4), state=state)
    rows = load_predictions(tmp_path / "out")
    assert _ids(rows) == [r.id for r in data]  # dataset order, each id once
    assert (stats.scored, stats.errors, stats.already_done) == (11, 1, 0)
    for record, row in zip(data, rows):
        if record.id == "p005":
            continue
        assert row["delta"]["overall"] == pytest.approx(toy.expected_delta(record), abs=1e-12)
        assert row["delta"]["TA"] == row["delta"]["overall"]
        assert row["score_a"]["overall"] - row["score_b"]["overall"] == pytest.approx(row["delta"]["overall"])
        assert row["labels"] == {k: {"a": 1, "b": -1, "tie": 0}[v] for k, v in record.label.items()}
        assert row["item_id"] == record.meta["item_id"] and row["category"] == record.meta["category"]
    assert not (tmp_path / "out" / SHARD_DIR).exists()  # merged and removed


def test_media_failure_is_recorded_not_fatal(tmp_path, data, state):
    run_predictions(data, toy.ToyScorer(), tmp_path / "out", RunnerConfig(batch_size=4), state=state)
    rows = {r["id"]: r for r in load_predictions(tmp_path / "out")}
    bad = rows["p005"]
    assert bad["error"]["type"] == "MediaError"
    assert "p005" in bad["error"]["message"] and "5_a.png" in bad["error"]["message"]
    assert "delta" not in bad
    assert sum("error" in r for r in rows.values()) == 1


def test_failing_batch_is_narrowed_to_the_pair_at_fault(tmp_path, state):
    data = list(read_records(toy.write_toy_records(tmp_path / "d", 6, reject=[2])))
    scorer = toy.ToyScorer()
    run_predictions(data, scorer, tmp_path / "out", RunnerConfig(batch_size=6, bucket_by_length=False), state=state)
    rows = {r["id"]: r for r in load_predictions(tmp_path / "out")}
    assert rows["p002"]["error"]["type"] == "SampleError"
    assert all("delta" in rows[i] for i in rows if i != "p002")
    # The batch of 6 failed, then every pair was retried alone (the rejected one never succeeds).
    assert scorer.batches == [[f"p{i:03d}"] for i in range(6) if i != 2]


def test_length_bucketing_orders_batches_by_cost(tmp_path, data, state):
    scorer = toy.ToyScorer()
    run_predictions(data, scorer, tmp_path / "out", RunnerConfig(batch_size=3), state=state)
    by_id = {r.id: r for r in data}
    costs = [[scorer.cost(by_id[i]) for i in batch] for batch in scorer.batches]
    flat = [c for batch in costs for c in batch]
    assert flat == sorted(flat)  # cheapest first: similar lengths share a batch
    assert all(len(b) <= 3 for b in scorer.batches)


def test_resume_skips_done_ids_and_survives_a_cut_line(tmp_path, data, state):
    out = tmp_path / "out"
    run_predictions(data, toy.ToyScorer(), out, RunnerConfig(batch_size=4), state=state)
    full = load_predictions(out)
    # What a kill leaves: rows of 4 ids streamed (one twice), a half-written line, no merged file.
    shard = out / SHARD_DIR / "part-00000.jsonl"
    shard.parent.mkdir(exist_ok=True)
    lines = [json.dumps(r) for r in full[:4]] + [json.dumps(full[1])]
    shard.write_text("\n".join(lines) + "\n" + json.dumps(full[4])[:25])
    (out / PREDICTIONS_NAME).unlink()

    scorer = toy.ToyScorer()
    stats = run_predictions(data, scorer, out, RunnerConfig(batch_size=4), state=state)
    rows = load_predictions(out)
    assert _ids(rows) == [r.id for r in data]
    assert stats.already_done == 4
    assert sorted(i for b in scorer.batches for i in b) == sorted(r.id for r in data[4:] if r.id != "p005")
    assert rows == full  # the resumed run gives the same rows
    # A rerun with everything done scores nothing.
    again = toy.ToyScorer()
    assert run_predictions(data, again, out, state=state).already_done == len(data) and again.batches == []


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{not json\n{"id": "b"}\n')
    with pytest.raises(PredictionsError, match=r"p.jsonl:2"):
        read_rows(path)


def test_consolidate_prefers_scored_rows_over_errors(tmp_path):
    (tmp_path / SHARD_DIR).mkdir()
    (tmp_path / PREDICTIONS_NAME).write_text(json.dumps({"id": "x", "error": {"type": "MediaError", "message": "m"}}) + "\n")
    (tmp_path / SHARD_DIR / "part-00001.jsonl").write_text(json.dumps({"id": "x", "delta": {"overall": 1.0}}) + "\n"
                                                            + json.dumps({"id": "w", "delta": {"overall": 2.0}}) + "\n")
    rows = consolidate(tmp_path, order=["w", "x"])
    assert rows == [{"id": "w", "delta": {"overall": 2.0}}, {"id": "x", "delta": {"overall": 1.0}}]
    assert read_rows(tmp_path / PREDICTIONS_NAME) == rows
    assert not (tmp_path / SHARD_DIR).exists()


def test_retry_errors_rescores_fixed_media(tmp_path, data, state):
    out = tmp_path / "out"
    run_predictions(data, toy.ToyScorer(), out, state=state)
    bad = next(r for r in data if r.id == "p005")
    from PIL import Image

    Image.new("RGB", (16, 16), (9, 9, 9)).save(bad.a.image)  # the media get fixed
    scorer = toy.ToyScorer()
    run_predictions(data, scorer, out, state=state)
    assert scorer.batches == []  # an error row counts as done...
    run_predictions(data, scorer, out, RunnerConfig(retry_errors=True), state=state)
    assert scorer.batches == [["p005"]]  # ...unless asked to retry
    row = {r["id"]: r for r in load_predictions(out)}["p005"]
    assert row["delta"]["overall"] == pytest.approx(toy.expected_delta(bad))


def test_rerun_with_another_scorer_or_data_is_refused(tmp_path, data, state):
    out = tmp_path / "out"
    run_predictions(data, toy.ToyScorer(), out, state=state, identity={"data": "one"})
    with pytest.raises(RunConfigError, match=r"differs in \['data'\]"):
        run_predictions(data, toy.ToyScorer(), out, state=state, identity={"data": "two"})
    with pytest.raises(RunConfigError, match="both_orders"):
        run_predictions(data, toy.ToyScorer(), out, RunnerConfig(both_orders=True), state=state, identity={"data": "one"})
    scorer = toy.ToyScorer()
    run_predictions(data[:3], scorer, out, state=state, identity={"data": "two"}, overwrite=True)
    assert _ids(load_predictions(out)) == ["p000", "p001", "p002"]


def test_duplicate_ids_are_refused(tmp_path, data, state):
    with pytest.raises(ValueError, match="p000"):
        run_predictions([data[0], data[0]], toy.ToyScorer(), tmp_path / "out", state=state)


def test_both_orders_scores_the_swapped_pair(tmp_path, data, state):
    run_predictions(data, toy.ToyScorer(), tmp_path / "out", RunnerConfig(both_orders=True), state=state)
    for row in load_predictions(tmp_path / "out"):
        if "error" not in row:
            assert row["delta_swapped"]["overall"] == pytest.approx(-row["delta"]["overall"])


def test_dataloader_workers_give_the_same_rows(tmp_path, data, state):
    inline, workers = toy.ToyScorer(), toy.ToyScorer()
    run_predictions(data, inline, tmp_path / "inline", RunnerConfig(batch_size=5), state=state)
    run_predictions(data, workers, tmp_path / "workers", RunnerConfig(batch_size=5, num_workers=2), state=state)
    assert load_predictions(tmp_path / "workers") == load_predictions(tmp_path / "inline")
    # Batches are collated in the worker processes, not in the process that runs the model.
    assert set(inline.collate_pids) == {os.getpid()}
    assert len(workers.collate_pids) == len(inline.collate_pids) and os.getpid() not in workers.collate_pids


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batch_that_cannot_be_collated_is_narrowed_to_the_pair_at_fault(tmp_path, state, num_workers):
    data = list(read_records(toy.write_toy_records(tmp_path / "d", 6, uncollatable=[4])))
    scorer = toy.ToyScorer()
    cfg = RunnerConfig(batch_size=3, bucket_by_length=False, num_workers=num_workers)
    run_predictions(data, scorer, tmp_path / "out", cfg, state=state)
    rows = {r["id"]: r for r in load_predictions(tmp_path / "out")}
    assert rows["p004"]["error"] == {"type": "SampleError",
                                     "message": "toy scorer cannot collate prompts containing UNCOLLATABLE"}
    assert all("delta" in rows[i] for i in rows if i != "p004") and len(rows) == 6
    # The first batch went through whole; the second was collated pair by pair in the main process.
    assert scorer.batches == [["p000", "p001", "p002"], ["p003"], ["p005"]]
    assert scorer.collate_pids[1:] == [os.getpid(), os.getpid()]


# ------------------------------------------------------------------------------------ scorers


def test_swap_record_and_verdicts():
    rec = PreferenceRecord("r", "p", Side(response="A"), Side(response="B"), {"overall": "a", "VQ": "tie", "TA": "b"})
    swapped = swap_record(rec)
    assert (swapped.a.response, swapped.b.response) == ("B", "A")
    assert swapped.label == {"overall": "b", "VQ": "tie", "TA": "a"}
    assert [verdict_to_delta(v) for v in (1, 2, 0, None)] == [1.0, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="3"):
        verdict_to_delta(3)


class _FakeJudge:
    """Prefers the side with the longer response; no answer for VQ."""

    def judge(self, records):
        out = []
        for r in records:
            la, lb = len(r.a.response), len(r.b.response)
            overall = 1 if la > lb else 2 if lb > la else 0
            out.append(JudgeVerdict({"overall": overall, "VQ": None}, trace={"turns": 1}))
        return out


def test_judge_scorer_maps_verdicts(tmp_path, state):
    recs = [PreferenceRecord(f"j{i}", "p", Side(response="x" * i), Side(response="xx"), {"overall": "a"}) for i in range(4)]
    run_predictions(recs, JudgeScorer(_FakeJudge()), tmp_path / "out", RunnerConfig(both_orders=True), state=state)
    rows = load_predictions(tmp_path / "out")
    assert [r["delta"]["overall"] for r in rows] == [-1.0, -1.0, 0.0, 1.0]
    assert [r["delta_swapped"]["overall"] for r in rows] == [1.0, 1.0, 0.0, -1.0]
    assert rows[0]["extra"] == {"verdicts": {"overall": 2, "VQ": None}, "unanswered": ["VQ"], "trace": {"turns": 1}}
    assert rows[0]["score_a"] is None


def test_judge_without_overall_verdict_is_a_sample_error():
    class NoOverall:
        def judge(self, records):
            return [JudgeVerdict({"VQ": 1}) for _ in records]

    rec = PreferenceRecord("r", "p", Side(response="a"), Side(response="b"), {"overall": "a"})
    with pytest.raises(SampleError, match="overall"):
        JudgeScorer(NoOverall()).score([rec])


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory):
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("syn")
    cfg = SyntheticConfig(image_splits=SplitSizes(1, 1, 6), video_splits=SplitSizes(1, 1, 2))
    generate_synthetic(out, seed=0, config=cfg)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from mmreward.backbones.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_scorer_is_prompt_image_cosine(tmp_path, synthetic_images, clip_dir, state):
    import torch

    scorer = ClipScorer.from_pretrained(clip_dir, dimensions=["TA"])
    recs = list(read_records(synthetic_images / "images" / "test.jsonl"))
    run_predictions(recs, scorer, tmp_path / "out", RunnerConfig(batch_size=4), state=state)
    rows = load_predictions(tmp_path / "out")
    assert len(rows) == len(recs) and all("delta" in r for r in rows)
    rec = recs[0]
    with torch.no_grad():
        text = scorer.model.encode_text(scorer.tokenizer([rec.prompt]), normalize=True)[0]
        sims = [float(scorer.model.encode_image(scorer.preprocess(img)[None], normalize=True)[0] @ text)
                for img in (load_pair_media(rec, MediaConfig()).a.images[0], load_pair_media(rec, MediaConfig()).b.images[0])]
    assert rows[0]["score_a"] == {"overall": pytest.approx(sims[0], abs=1e-5), "TA": pytest.approx(sims[0], abs=1e-5)}
    assert rows[0]["delta"]["overall"] == pytest.approx(sims[0] - sims[1], abs=1e-5)


def test_clip_scorer_video_mean_over_frames_and_text_only_error(tmp_path, synthetic_images, clip_dir, state):
    scorer = ClipScorer.from_pretrained(clip_dir, media=MediaConfig(num_frames=3))
    recs = list(read_records(synthetic_images / "videos" / "test.jsonl"))
    text_only = PreferenceRecord("t", "p", Side(response="a"), Side(response="b"), {"overall": "a"})
    run_predictions(recs + [text_only], scorer, tmp_path / "out", state=state)
    rows = {r["id"]: r for r in load_predictions(tmp_path / "out")}
    assert rows["t"]["error"]["type"] == "SampleError" and "no image or video" in rows["t"]["error"]["message"]
    assert scorer.prepare(recs[0]).pixels_a.shape[0] == 3  # three sampled frames per side
    assert all("delta" in rows[r.id] for r in recs)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.model import RewardModel

    root = tmp_path_factory.mktemp("rm")
    model = RewardModel.from_backbone(build_tiny_vlm(root / "vlm"), dimensions=["VQ", "TA"])
    return model.save_pretrained(root / "ckpt")


def test_reward_model_scorer_deltas_and_batch_invariance(tmp_path, reward_model_dir, synthetic_images, state):
    scorer = RewardModelScorer.from_pretrained(reward_model_dir)
    recs = list(read_records(synthetic_images / "images" / "test.jsonl"))
    for rec, resp in zip(recs, ["short", "a much longer response " * 4, "", "mid length", "x", "yy"]):
        rec.a.response, rec.b.response = resp, resp[::-1]
    run_predictions(recs, scorer, tmp_path / "b4", RunnerConfig(batch_size=4), state=state)
    run_predictions(recs, scorer, tmp_path / "b1", RunnerConfig(batch_size=1), state=state)
    run_predictions(recs, scorer, tmp_path / "workers", RunnerConfig(batch_size=4, num_workers=1), state=state)
    batched, single = load_predictions(tmp_path / "b4"), load_predictions(tmp_path / "b1")
    assert load_predictions(tmp_path / "workers") == batched  # processor tensors built in a worker
    for rb, rs in zip(batched, single):
        assert set(rb["delta"]) == {"VQ", "TA", "overall"}
        assert rb["score_a"]["overall"] == pytest.approx(rb["score_a"]["VQ"] + rb["score_a"]["TA"])
        for dim in rb["delta"]:
            assert rb["delta"][dim] == pytest.approx(rb["score_a"][dim] - rb["score_b"][dim])
            assert rb["delta"][dim] == pytest.approx(rs["delta"][dim], abs=1e-5)  # padding does not change scores
    # The cost estimate grows with the response length (what length bucketing sorts on).
    costs = [scorer.cost(r) for r in recs]
    assert costs[1] > costs[3] > costs[0] > costs[2]
    # Exactly: the longer side's text tokens plus its image's pixels over (patch * merge)^2.
    image_processor, tokenizer = scorer.model.processor.image_processor, scorer.model.processor.tokenizer
    recs[2].b.response = "a longer b side"

    def side_cost(rec, side):
        with Image.open(side.image) as img:
            width, height = img.size
        pixels_per_token = (image_processor.patch_size * image_processor.merge_size) ** 2
        return len(tokenizer.encode(rec.prompt + side.response)) + width * height / pixels_per_token

    assert scorer.costs(recs) == pytest.approx([max(side_cost(r, r.a), side_cost(r, r.b)) for r in recs])
    assert scorer.costs(recs)[2] == pytest.approx(side_cost(recs[2], recs[2].b))
    # Scores equal the model's own on a hand-built batch.
    batch = scorer.collator([scorer.prepare(recs[1])])
    rewards = scorer.model.score(batch["inputs"])
    assert batched[1]["score_a"]["VQ"] == pytest.approx(float(rewards[0, 0]), abs=1e-5)
    assert batched[1]["score_b"]["TA"] == pytest.approx(float(rewards[1, 1]), abs=1e-5)


def test_reward_model_scorer_overall_choice(reward_model_dir):
    from mmreward.model import RewardModel

    model = RewardModel.from_pretrained(reward_model_dir)
    with pytest.raises(ValueError, match="overall='MQ'"):
        RewardModelScorer(model, overall="MQ")
    rec = PreferenceRecord("r", "p", Side(response="one"), Side(response="two!"), {"overall": "a"})
    scorer = RewardModelScorer(model, overall="TA")
    (score,) = scorer.score(scorer.collate([load_pair_media(rec, MediaConfig())]))
    assert score.delta["overall"] == score.delta["TA"]
    assert np.isfinite(score.delta["VQ"])


def test_reward_model_scorer_with_a_yes_token_head(tmp_path, synthetic_images, state):
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.model import RewardModel

    model = RewardModel.from_backbone(build_tiny_vlm(tmp_path / "vlm"), head="yes_token", dimensions=["TA"])
    scorer = RewardModelScorer(model)
    recs = list(read_records(synthetic_images / "images" / "test.jsonl"))[:3]
    run_predictions(recs, scorer, tmp_path / "out", state=state)
    rows = load_predictions(tmp_path / "out")
    for rec, row in zip(recs, rows):
        assert 0.0 < row["score_a"]["TA"] < 1.0  # P(yes)
        assert row["delta"]["overall"] == pytest.approx(row["score_a"]["TA"] - row["score_b"]["TA"])
        # The head's own question about side a alone gives the same P(yes).
        inputs = model.head.encode_sides(model.processor, [rec.prompt], [load_pair_media(rec, MediaConfig()).a],
                                         scorer.collate_cfg)
        assert row["score_a"]["TA"] == pytest.approx(float(model.score(inputs)[0, 0]), abs=1e-5)
