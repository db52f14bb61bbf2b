"""GRPO pieces: exact advantages, k3 and clipped loss values; per-turn rows with the exact windowed context; the loss
mask (tool and user tokens get no gradient, their images stay in the forward); per-trace normalisation across
micro-batches; one loop step changes the trainable parameters only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.backbones.vlm import LoRASettings, VLMLoadConfig, load_vlm
from vr_thinker.env import VideoPairEnv, frame_pool_from_arrays
from vr_thinker.grpo import (
    GRPOLossConfig,
    PolicyRow,
    PolicyRowCollator,
    group_advantages,
    grpo_token_loss,
    k3_kl,
    kl_in_advantages,
    rollout_rows,
    token_logprobs,
    token_weights,
)
from vr_thinker.grpo_loop import GRPOConfig, GRPOLoop, JudgePair
from vr_thinker.presets import load_preset
from vr_thinker.rollout import HFRolloutEngine, SamplingConfig

ANSWER = "<synthesis>s</synthesis><think>Decide.</think><final answer>TA=1, VQ=1, MQ=0, OA=2</final answer>"


def preset(window: int | None = 1, images: bool = False, turns: int = 5):
    overrides = ["frames.per_video=8", f"limits.max_turns={turns}", "limits.max_tool_calls=4",
                 f"limits.memory_window={'null' if window is None else window}",
                 'prompt.system="Judge."', 'prompt.first_turn="Prompt: {prompt}"']
    return load_preset("vr-thinker", overrides + (["prompt.first_turn_media=images"] if images else []))


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------------------ exact values


def test_group_advantages_exact():
    rewards = [1.0, 0.0, 0.5, 0.5, 3.0, 2.0, 1.0, 7.0]
    groups = ["a", "a", "b", "b", "c", "c", "c", "d"]
    # official: population std + 1e-8 ([1, 0]: 0.5; [3, 2, 1]: sqrt(2/3))
    pop = math.sqrt(2 / 3)
    expected = [1.0, -1.0, 0.0, 0.0, 1 / pop, 0.0, -1 / pop, 0.0]
    assert group_advantages(rewards, groups).tolist() == pytest.approx(expected, abs=1e-6)
    std_a = math.sqrt(0.5)  # unbiased std of [1, 0]
    expected = [0.5 / (std_a + 1e-4), -0.5 / (std_a + 1e-4), 0.0, 0.0, 1.0 / 1.0001, 0.0, -1.0 / 1.0001, 0.0]
    assert group_advantages(rewards, groups, eps=1e-4, population_std=False).tolist() == pytest.approx(expected, abs=1e-6)
    assert group_advantages(rewards, groups, scale="none").tolist() == pytest.approx(
        [0.5, -0.5, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0], abs=1e-7)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, groups, scale="max")


def test_k3_exact():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    # d = ref - logp: ln 0.5 -> 0.5 + ln 2 - 1; ln 2 -> 2 - ln 2 - 1; 0 -> 0
    expected = [0.5 + math.log(2) - 1, 1 - math.log(2), 0.0]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)


def test_clipped_loss_exact():
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0])
    old = torch.log(torch.tensor([0.2, 0.2, 0.4, 0.4, 0.3]))
    logp = old + torch.log(ratios)
    ref = old  # k3 of each token: ratio - 1 - ln(ratio) with d = -ln(ratio)
    entropy = torch.tensor([1.0, 2.0, 0.5, 0.0, 1.0])
    cfg = GRPOLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_in="loss", entropy_coef=0.01)
    out = grpo_token_loss(logp, old, advantages, cfg, ref_logp=ref, entropy=entropy)
    surrogate = [-1.28, 1.5, 0.8, -0.5, -2.0]  # -min(r A, clip(r) A)
    k3 = [1 / 1.5 - 1 + math.log(1.5), 1 / 1.5 - 1 + math.log(1.5), 2 - 1 + math.log(0.5), 1 + math.log(0.5), 0.0]
    expected = [s + 0.1 * k - 0.01 * h for s, k, h in zip(surrogate, k3, entropy.tolist())]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.high_clipped.tolist() == [True, False, False, False, False]
    assert out.low_clipped.tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match="reference"):
        grpo_token_loss(logp, old, advantages, cfg)
    # KL in the reward (official): the loss has no KL term, the k3 is still reported.
    in_reward = grpo_token_loss(logp, old, advantages, GRPOLossConfig(clip_high=0.35, kl_coef=0.1), ref_logp=ref)
    assert in_reward.loss.tolist() == pytest.approx([-1.35, 1.5, 0.8, -0.5, -2.0], abs=1e-5)
    assert in_reward.kl.tolist() == pytest.approx(k3, abs=1e-6)


def test_kl_as_a_reward_is_summed_to_the_end_of_each_turn():
    # Two rows: row 0 holds two turns (loss runs of 2 and 1 tokens), row 1 one turn of 3 tokens.
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0]])
    kl = torch.tensor([0.1, 0.2, 0.4, 1.0, 2.0, 3.0])
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    out = kl_in_advantages(advantages, kl, loss_mask, kl_coef=0.5)
    expected = [1 - 0.5 * 0.3, 1 - 0.5 * 0.2, 1 - 0.5 * 0.4, -1 - 0.5 * 6.0, -1 - 0.5 * 5.0, -1 - 0.5 * 3.0]
    assert out.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="tokens"):
        kl_in_advantages(advantages[:5], kl[:5], loss_mask, 0.5)

def test_token_weights_normalise_per_trace():
    def row(trace: int, tokens: int) -> PolicyRow:
        return PolicyRow([0] * (tokens + 1), [0] + [1] * tokens, [], [], trace)

    rows = [row(0, 2), row(0, 3), row(1, 5), row(2, 1)]
    assert token_weights(rows) == pytest.approx([1 / 15, 1 / 15, 1 / 15, 1 / 3])
    assert token_weights(rows, "token_mean") == pytest.approx([1 / 11] * 4)
    assert token_weights(rows, "constant", 200.0, micro_batches=2) == pytest.approx([1 / 400] * 4)  # official
    with pytest.raises(ValueError, match="aggregation"):
        token_weights(rows, "sum")
    # weighted sum of per-token losses = mean over traces of each trace's mean token loss
    losses = [[1.0, 2.0], [3.0, 4.0, 5.0], [1.0] * 5, [9.0]]
    total = sum(w * sum(values) for w, values in zip(token_weights(rows), losses))
    assert total == pytest.approx((15 / 5 + 1.0 + 9.0) / 3)


# ------------------------------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "m", family="qwen2_5_vl", seed=0)
    model, processor = load_vlm(VLMLoadConfig(path=str(path), dtype="float32", tool_chat_template=True))
    return path, model.eval(), processor


def make_env(seed: int = 0, window: int | None = 1, images: bool = False) -> VideoPairEnv:
    rng = np.random.default_rng(seed)
    pools = [frame_pool_from_arrays(rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)) for _ in range(2)]
    return VideoPairEnv(f"a ball ({seed})", *pools, preset(window, images))


def call(frames: list[int]) -> str:
    body = json.dumps({"name": "select_frames", "arguments": {"target_frames": frames}})
    return ("<synthesis>s</synthesis><think>look</think><recommend answer>TA=1, VQ=1, MQ=0, OA=2, CF=3"
            f"</recommend answer>\n<tool_call>\n{body}\n</tool_call>")


@pytest.fixture(scope="module")
def traces(tiny):
    """Two scripted three-turn episodes (two calls, then the answer; memory window 1), treated as model samples."""
    _, model, processor = tiny
    engine = HFRolloutEngine(model, processor, record_logits=True)
    scripts = [[call([1, 2]), call([5]), ANSWER], [call([3]), call([6, 7]), ANSWER]]
    out = engine.rollout([make_env(0), make_env(1)], SamplingConfig(max_new_tokens=4), forced=scripts)
    for trace in out:
        assert trace.status == "answered" and len(trace.turns) == 3
        for turn in trace.turns:
            turn.finish = "stop_string"  # what a sampled turn would report; forced turns are never trained
    return out


def test_rows_follow_the_memory_window(traces, tiny):
    _, _, processor = tiny
    merged = rollout_rows(traces, merge=True)
    single = rollout_rows(traces, merge=False)
    # turn 1 still sees call 1's frames (extends turn 0); turn 2 no longer does (the window dropped them)
    assert [(r.trace, r.turns) for r in merged] == [(0, [0, 1]), (0, [2]), (1, [0, 1]), (1, [2])]
    assert [(r.trace, r.turns) for r in single] == [(t, [k]) for t in (0, 1) for k in range(3)]
    for row, (t, k) in zip(single, [(t, k) for t in (0, 1) for k in range(3)]):
        turn = traces[t].turns[k]
        assert row.input_ids == turn.context_ids + turn.generated_ids
        assert row.loss_mask == [0] * len(turn.context_ids) + [1] * len(turn.generated_ids)
        assert row.images == turn.images and row.videos == turn.videos
    # Row 1 (turn 2) no longer holds call 1's two images; the first turn's video and call 2's image stay.
    assert len(merged[0].images) == 2 and len(merged[1].images) == len(traces[0].turns[2].images) == 1
    assert len(merged[1].videos) == 1 and merged[1].videos[0] == traces[0].turns[0].videos[0]
    # the merged row's loss tokens are exactly the generated tokens of turns 0 and 1, in order
    row = merged[0]
    picked = [i for i, m in zip(row.input_ids, row.loss_mask) if m]
    assert picked == traces[0].turns[0].generated_ids + traces[0].turns[1].generated_ids
    forced = rollout_rows([_with_forced_first(traces[0])])
    assert forced[0].turns == [1] and sum(forced[0].loss_mask) == len(traces[0].turns[1].generated_ids)


def _with_forced_first(trace):
    import copy

    clone = copy.copy(trace)
    clone.turns = [copy.copy(t) for t in trace.turns]
    clone.turns[0].finish = "forced"
    return clone


def _reference_logprobs(traces, entropy: bool = False) -> torch.Tensor:
    """Log-probs (or entropies) of the generated tokens from the logits the rollout engine recorded (cached prefill +
    decode)."""
    parts = []
    for trace in traces:
        for turn in trace.turns:
            logp = torch.log_softmax(turn.logits.float(), dim=-1)
            if entropy:
                parts.append(-(logp.exp() * logp).sum(-1))
            else:
                parts.append(logp.gather(-1, torch.tensor(turn.generated_ids)[:, None]).squeeze(-1))
    return torch.cat(parts)


def test_logprobs_match_the_rollout_merged_or_not(traces, tiny):
    _, model, processor = tiny
    collator = PolicyRowCollator(processor)
    expected = _reference_logprobs(traces)
    with torch.no_grad():
        for merge in (True, False):
            rows = rollout_rows(traces, merge=merge)
            logp, entropy = token_logprobs(model, collator(rows), with_entropy=True)
            assert logp.shape == expected.shape
            torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(entropy, _reference_logprobs(traces, entropy=True), atol=1e-4, rtol=0)
        # one row at a time (no padding) gives the same values as the padded batch
        rows = rollout_rows(traces)
        alone = torch.cat([token_logprobs(model, collator([row]))[0] for row in rows])
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_logprobs_match_the_rollout_in_other_families(tmp_path, family):
    path = build_tiny_vlm(tmp_path / family, family=family, seed=0)
    model, processor = load_vlm(VLMLoadConfig(path=str(path), dtype="float32", tool_chat_template=True))
    engine = HFRolloutEngine(model.eval(), processor, record_logits=True)
    env = make_env(0, images=family == "qwen3_vl")  # Qwen3-VL: the initial frames as images
    traces = engine.rollout([env], SamplingConfig(max_new_tokens=4), forced=[[call([1, 2]), call([5]), ANSWER]])
    for turn in traces[0].turns:
        turn.finish = "stop_string"
    with torch.no_grad():
        logp, _ = token_logprobs(model, PolicyRowCollator(processor)(rollout_rows(traces)))
    torch.testing.assert_close(logp, _reference_logprobs(traces), atol=1e-5, rtol=0)


def test_only_generated_tokens_get_gradient_and_tool_images_stay_in_the_forward(traces, tiny):
    path, _, processor = tiny
    model, _ = load_vlm(VLMLoadConfig(path=str(path), dtype="float32", tool_chat_template=True))
    rows = rollout_rows(traces)
    batch = PolicyRowCollator(processor)(rows)
    batch["pixel_values"].requires_grad_(True)
    captured = {}

    def keep_output(module, args, output):
        output.retain_grad()
        captured["hidden"] = output

    handle = model.model.language_model.norm.register_forward_hook(keep_output)
    try:
        logp, _ = token_logprobs(model, batch)
    finally:
        handle.remove()
    logp.sum().backward()
    # the final hidden state at position t feeds only the logits of token t + 1
    grad = captured["hidden"].grad.abs().sum(-1)  # [rows, length]
    predicts_loss = torch.zeros_like(batch["loss_mask"], dtype=torch.bool)
    predicts_loss[:, :-1] = batch["loss_mask"][:, 1:].bool()
    assert (grad[~predicts_loss] == 0).all()
    assert (grad[predicts_loss] > 0).all()
    # every tool / user turn token (system, prompt, observations, template markers) is outside the loss
    tool_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    for r, row in enumerate(rows):
        ids = torch.tensor(row.input_ids)
        assert not batch["loss_mask"][r, : len(ids)][ids == tool_start].any()
        image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        assert not batch["loss_mask"][r, : len(ids)][ids == image_id].any()
    # the images (the tool turns' frames included) are in the forward pass: each gets gradient
    patches = batch["image_grid_thw"].prod(-1).tolist()
    for block in torch.split(batch["pixel_values"].grad, patches):
        assert block.abs().sum() > 0


def test_micro_batches_add_up_to_the_full_batch_loss(traces, tiny):
    """Weights fixed per step: splitting a trace's rows over forwards gives the same gradient as one forward."""
    path, _, processor = tiny
    model, _ = load_vlm(VLMLoadConfig(path=str(path), dtype="float32", tool_chat_template=True, freeze_vision=True))
    rows = rollout_rows(traces)
    weights = torch.tensor(token_weights(rows))
    advantages = torch.tensor([0.7, -1.3])[[row.trace for row in rows]]
    collator = PolicyRowCollator(processor)
    cfg = GRPOLossConfig(kl_coef=0.0)

    def gradient(chunks: list[list[int]]) -> list[torch.Tensor]:
        model.zero_grad()
        for chunk in chunks:
            batch = collator([rows[i] for i in chunk])
            logp, _ = token_logprobs(model, batch)
            token_rows = batch["token_rows"]
            terms = grpo_token_loss(logp, logp.detach(), advantages[chunk][token_rows], cfg)
            (terms.loss * weights[chunk][token_rows]).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = gradient([list(range(len(rows)))])
    split = gradient([[i] for i in range(len(rows))])
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- one loop step


def _loop(model, processor, tmp_path, **overrides) -> GRPOLoop:
    rng = np.random.default_rng(3)
    pools = [frame_pool_from_arrays(rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)) for _ in range(2)]
    pair = JudgePair("p0", "a ball", pools[0], pools[1], {"TA": 1, "VQ": 1, "MQ": 0, "OA": 2})
    settings = dict(output_dir=str(tmp_path), max_steps=1, pairs_per_step=1, group_size=2, max_new_tokens=4,
                    learning_rate=1e-2, entropy_coef=0.1, micro_batch_rows=1, use_cpu=True)
    p = preset(turns=2)
    return GRPOLoop(model, processor, [pair], p, p.dimensions(), GRPOConfig(**(settings | overrides)),
                    accelerator=Accelerator(cpu=True))


@pytest.mark.parametrize("mode", ["frozen_vision", "lora"])
def test_one_step_changes_trainable_parameters_only(tiny, tmp_path, mode):
    path, _, processor = tiny
    lora = LoRASettings(r=4, alpha=8, dropout=0.0) if mode == "lora" else None
    model, _ = load_vlm(VLMLoadConfig(path=str(path), dtype="float32", freeze_vision=True, lora=lora,
                                      tool_chat_template=True))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    try:
        loop = _loop(model, processor, tmp_path)
        metrics = loop.train_step()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed and changed <= trainable
    assert not any(".visual." in name for name in changed)
    if mode == "lora":
        assert all("lora_" in name for name in changed)
    assert loop.state.step == 1 and metrics["rows"] >= 2
    for key in ("reward/mean", "kl", "entropy", "clip/fraction", "grad_norm", "response_length/mean",
                "reward/curiosity", "reward/calls"):
        assert math.isfinite(metrics[key]), key
    # Unset settings came from the preset: the official objective.
    assert (loop.cfg.kl_coef, loop.cfg.kl_in, loop.cfg.clip_high, loop.cfg.loss_aggregation) == (0.01, "reward", 0.35,
                                                                                                  "constant")
    assert (loop.cfg.temperature, loop.cfg.later_temperature, loop.cfg.top_p, loop.cfg.top_k) == (1.0, 0.9, 0.95, 40)
    assert loop.cfg.learning_rate == 1e-2 and loop.cfg.reward_variant == "official"


def test_step_data_is_a_function_of_the_step(tiny, tmp_path):
    path, model, processor = tiny
    try:
        loop = _loop(model, processor, tmp_path, max_steps=1, entropy_coef=0.0, kl_coef=0.0)
        pairs = [JudgePair(f"p{i}", "x", None, None, {"overall": 1}) for i in range(5)]  # type: ignore[arg-type]
        loop.pairs, loop.cfg.pairs_per_step = pairs, 2
        seen = [p.id for step in range(5) for p in loop.step_pairs(step)]
        positions = [list(loop.step_positions(step)) for step in range(3)]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert sorted(seen[:5]) == sorted(seen[5:]) == [f"p{i}" for i in range(5)]  # every pair once per epoch
    assert positions == [[0, 1], [2, 3], [4, 5]]  # the keys of the episodes' sampling seeds


def test_loop_rollouts_do_not_depend_on_the_rollout_batch(tiny, tmp_path):
    """Episode i samples with seeds[i]: one batch of four or four batches of one give the same tokens."""
    path, model, processor = tiny
    try:
        loop = _loop(model, processor, tmp_path, max_new_tokens=6)
        seeds = [11, 12, 13, 11]
        envs = lambda: loop._envs(loop.pairs, 4, seeds)  # noqa: E731
        together = loop.rollout(envs(), loop.cfg.sampling(), seeds)
        loop.cfg.rollout_batch_size = 1
        one_by_one = loop.rollout(envs(), loop.cfg.sampling(), seeds)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    tokens = [[t.generated_ids for t in trace.turns] for trace in together]
    assert tokens == [[t.generated_ids for t in trace.turns] for trace in one_by_one]
    assert tokens[0] == tokens[3] and len({str(t) for t in tokens[:3]}) == 3
