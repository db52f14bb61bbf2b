"""Judge results and their scores against labels (exact values), and sampled judging independent of the batch size."""

from types import SimpleNamespace

import pytest

from mmreward.data.records import PreferenceRecord, Side
from vr_thinker.judge import JudgeResult, VRThinkerJudge, load_judge_config, save_judge_config, score_results
from vr_thinker.presets import load_preset
from vr_thinker.rewards import TraceOutcome
from vr_thinker.rollout import RolloutTrace

PRESET = load_preset("vr-thinker")
VQ_TA = tuple(d for d in PRESET.dimensions() if d.key in ("VQ", "TA"))


def result(verdicts: dict, status: str = "answered", valid=(True, True), calls: int = 1, dims=VQ_TA) -> JudgeResult:
    outcome = TraceOutcome(verdicts=verdicts, turn_valid=list(valid), num_tool_calls=calls)
    trace = RolloutTrace(turns=[], status=status, tool_calls=[], final_check=None, outcome=outcome, wall_s=0.0)
    return JudgeResult(dict(verdicts), status, trace, env=SimpleNamespace(preset=PRESET, dimensions=dims))


def record(label: dict) -> PreferenceRecord:
    return PreferenceRecord("r", "p", Side(), Side(), label)


def test_score_results_exact_values():
    records = [
        record({"VQ": "a", "TA": "tie", "overall": "a"}),
        record({"VQ": "b", "TA": "b", "overall": "b"}),
        record({"VQ": "tie", "TA": "a", "overall": "a"}),
        record({"VQ": "a", "TA": "a", "overall": "a"}),
    ]
    results = [
        result({"VQ": 1, "TA": 0, "OA": 1}),  # all right
        result({"VQ": 2, "TA": 1, "OA": 1}),  # VQ right only
        result({"VQ": 0, "OA": 1}, status="invalid_answer", valid=(False,), calls=0),  # TA missing
        result({}, status="truncated", valid=(True, False), calls=3),
    ]
    m = score_results(results, records)
    assert m.pairs == 4
    assert m.format_valid_rate == 0.5
    assert m.overall_accuracy == 0.5
    assert m.dimension_accuracy == {"VQ": 0.75, "TA": 0.25}
    # accuracy reward: 0.5 * overall + 0.5 * mean over dimensions
    assert m.mean_accuracy_reward == pytest.approx((1.0 + 0.25 + (0.5 + 0.25) + 0.0) / 4)
    assert m.all_right_rate == 0.25
    assert m.mean_tool_calls == 5 / 4
    assert m.statuses == {"answered": 2, "invalid_answer": 1, "truncated": 1}
    with pytest.raises(ValueError, match="one result per record"):
        score_results(results[:1], records)


def test_preference_uses_the_record_label_convention():
    r = result({"VQ": 2, "TA": 0, "OA": 1})
    assert (r.preference(), r.preference("VQ"), r.preference("TA"), r.preference("MQ")) == ("a", "b", "tie", None)
    assert r.labels() == {"VQ": "b", "TA": "tie", "overall": "a"}
    assert r.format_valid and not result({"OA": 1}, valid=(True, False)).format_valid
    assert not result({"OA": 1}, status="truncated").format_valid


def test_scores_follow_the_dimension_sets_label_keys():
    mj = PRESET.dimensions("mjbench_video")
    records = [record({"Alignment": "a", "Fineness": "b", "Coherence & Consistency": "tie", "overall": "a"})]
    m = score_results([result({"TA": 1, "VQ": 1, "MQ": 0, "OA": 1}, dims=mj)], records)
    assert m.dimension_accuracy == {"Alignment": 1.0, "Fineness": 0.0, "Coherence & Consistency": 1.0}
    assert m.overall_accuracy == 1.0 and m.all_right_rate == 0.0


def test_judge_config_round_trip(tmp_path):
    preset = load_preset("vr-thinker", ["frames.per_video=8", "limits.memory_window=null"])
    save_judge_config(tmp_path, preset, VQ_TA)
    loaded, dims = load_judge_config(tmp_path)
    assert loaded == preset and dims == VQ_TA and loaded.overrides == preset.overrides
    assert load_judge_config(tmp_path / "missing") is None
    (tmp_path / "vr_thinker.json").write_text('{"preset": {"name": "x"}, "dimensions": []}')
    with pytest.raises(ValueError, match="not a valid judge config"):
        load_judge_config(tmp_path)


def test_a_released_checkpoint_needs_its_preset_named(tmp_path):
    from mmreward.backbones.tiny import build_tiny_vlm

    path = build_tiny_vlm(tmp_path / "released")  # a checkpoint directory without vr_thinker.json
    with pytest.raises(ValueError, match="name the protocol preset"):
        VRThinkerJudge.from_pretrained(path)
    judge = VRThinkerJudge.from_pretrained(path, preset="vrthinker", dimensions="mjbench_video")
    assert judge.preset.name == "vrthinker" and [d.label for d in judge.dimensions][0] == "Alignment"
    assert judge.sampling.max_new_tokens == 2048 and not judge.sampling.do_sample
    save_judge_config(path, load_preset("vr-thinker", ["frames.per_video=8"]), VQ_TA)
    trained = VRThinkerJudge.from_pretrained(path)
    assert trained.preset.frames.per_video == 8 and trained.dimensions == VQ_TA


def test_sampled_verdicts_do_not_depend_on_the_batch_size(tmp_path):
    """Pair i samples with seed sampling.seed + i, whether judged alone, in a batch of two or of three."""
    import numpy as np
    import torch

    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from vr_thinker.env import frame_pool_from_arrays
    from vr_thinker.rollout import SamplingConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = load_vlm(VLMLoadConfig(path=str(build_tiny_vlm(tmp_path / "m")), dtype="float32",
                                                  tool_chat_template=True))
        rng = np.random.default_rng(0)
        items = [(f"pair {i}", *(frame_pool_from_arrays(rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8))
                                 for _ in "ab")) for i in range(3)]
        preset = load_preset("vr-thinker", ["frames.per_video=8", "limits.max_turns=2", 'prompt.system="Judge."',
                                            'prompt.first_turn="Prompt: {prompt}"'])
        sampling = SamplingConfig(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)

        def tokens(batch_size: int) -> list:
            judge = VRThinkerJudge(model, processor, preset, None, sampling, batch_size=batch_size)
            return [[t.generated_ids for t in r.trace.turns] for r in judge.compare_many(items)]

        one = tokens(1)
        assert one == tokens(2) == tokens(3)
        assert len({str(t) for t in one}) == 3
    finally:
        torch.set_num_threads(threads)
