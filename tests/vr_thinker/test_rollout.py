"""Multi-turn rollouts with a KV cache kept across turns, checked against re-prefilling the whole context.

References are computed independently of the engine: the processor renders and tokenises each turn's windowed
context (``env.messages(before_turn=t)``), the model runs one full forward (positions from its own
``get_rope_index``, all images through the vision tower) with the turn's generated ids appended, and the logits
the engine chose each token from must match to 1e-5 (fp32).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForImageTextToText, AutoProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmreward.backbones.chat_template import TOOL_CHAT_TEMPLATE
from mmreward.backbones.tiny import build_tiny_vlm
from vr_thinker.env import VideoPairEnv, frame_pool_from_arrays
from vr_thinker.presets import load_preset
from vr_thinker.rollout import HFRolloutEngine, RolloutError, RolloutTrace, SamplingConfig, episode_seed
from vr_thinker.rollout.context import ConversationBuilder, seconds_per_grid
from vr_thinker.rollout.vllm_engine import _collapse_media

ATOL = 1e-5
GREEDY = SamplingConfig(max_new_tokens=12, do_sample=False)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class TinyModels:
    """Tiny random models built once per test module, one directory per family."""

    def __init__(self, root):
        self.root = root
        self.loaded: dict[str, tuple] = {}

    def __call__(self, family: str = "qwen2_5_vl"):
        if family not in self.loaded:
            path = build_tiny_vlm(self.root / family, family=family, seed=0)
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
            self.loaded[family] = (model, AutoProcessor.from_pretrained(path))
        return self.loaded[family]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny_vlms"))


def make_env(seed: int, prompt: str | None = None, memory_window: int | None = 1, images: bool = False,
             max_turns: int = 5, size: int = 56) -> VideoPairEnv:
    """An episode in the vr-thinker protocol at test size: pools of 8 frames per video (frames 1-16), the initial
    frames as one video (or as images: Qwen3-VL), short instruction texts."""
    rng = np.random.default_rng(seed)
    videos = [frame_pool_from_arrays(rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)) for _ in "12"]
    overrides = ["frames.per_video=8", f"limits.max_turns={max_turns}", "limits.max_tool_calls=4",
                 f"limits.memory_window={'null' if memory_window is None else memory_window}",
                 'prompt.system="Judge the videos."', 'prompt.first_turn="Prompt: {prompt}"']
    if images:
        overrides.append("prompt.first_turn_media=images")
    prompt = prompt or f"a ball rolls ({seed})"
    return VideoPairEnv(prompt, *videos, load_preset("vr-thinker", overrides))


def call(frames: list[int]) -> str:
    args = json.dumps({"name": "select_frames", "arguments": {"target_frames": frames}})
    return ("<synthesis>seen</synthesis><think>look</think><recommend answer>TA=1, VQ=0, MQ=0, OA=1, CF=3"
            f"</recommend answer>\n<tool_call>\n{args}\n</tool_call>")


def reference_logits(model, processor, env: VideoPairEnv, turn: int, generated: list[int]) -> tuple[list, torch.Tensor]:
    """Processor ids of the context before ``turn`` and full-forward logits predicting each generated token."""
    inputs = processor.apply_chat_template(
        env.messages(before_turn=turn), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt",
    )
    context = inputs["input_ids"][0].tolist()
    ids = torch.tensor([context + generated], device=model.device)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    video_id = processor.tokenizer.convert_tokens_to_ids(processor.video_token)
    keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
    vision = {k: inputs[k].to(model.device) for k in keys if k in inputs}
    if "second_per_grid_ts" in inputs:  # the protocol's frame rate (2 per second), not the processor's default
        vision["second_per_grid_ts"] = torch.tensor([seconds_per_grid(processor, 2.0)])
    types = (ids == image_id).int() + 2 * (ids == video_id).int()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, **vision).logits[0]
    n = len(context)
    return context, logits[n - 1 : n - 1 + len(generated)].float().cpu()


def max_diff(a: RolloutTrace, b: RolloutTrace) -> float:
    return max(float((x.logits - y.logits).abs().max()) for x, y in zip(a.turns, b.turns, strict=True))


# Episode 0: three calls, the second and third push older tool images out of the window; episode 1: one call.
# Both then generate a free (greedy) turn, which the random model never completes (truncated, episode over).
SCRIPTS = [[call([1, 2]), call([3]), call([5, 6, 7])], [call([4, 9])]]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen2_vl"])
def test_cached_turns_match_full_prefill(tiny, family):
    model, processor = tiny(family)
    images = family == "qwen3_vl"  # Qwen3-VL writes timestamps into videos: the first turn holds images there
    envs = [make_env(0, images=images), make_env(1, images=images)]
    traces = HFRolloutEngine(model, processor, record_logits=True).rollout(envs, GREEDY, forced=SCRIPTS)

    assert [len(t.turns) for t in traces] == [4, 2]
    for env, trace in zip(envs, traces):
        for t, turn in enumerate(trace.turns):
            context, ref = reference_logits(model, processor, env, t, turn.generated_ids)
            assert turn.context_ids == context, f"turn {t}: ids differ from the processor's"
            torch.testing.assert_close(turn.logits, ref, atol=ATOL, rtol=0)
            chosen = ref.log_softmax(-1).gather(-1, torch.tensor(turn.generated_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(turn.logprobs), chosen, atol=ATOL, rtol=0)
            assert turn.generated_mask == [0] * len(context) + [1] * len(turn.generated_ids)
            if t > 0:
                assert turn.reused_tokens > 0 and turn.prefilled_tokens < len(context) // 2
    turns = traces[0].turns
    # Memory window: before turn 2 the first tool turn's images became text, so the cache was cut back to just
    # before the first dropped image rather than extended from the end of turn 1.
    turn1_end = len(turns[1].context_ids) + len(turns[1].generated_ids) - 1
    first_dropped = turns[1].context_ids.index(processor.tokenizer.convert_tokens_to_ids(processor.image_token),
                                               len(turns[0].context_ids))
    assert turns[2].reused_tokens < turn1_end
    assert turns[2].reused_tokens == first_dropped - 1  # the <|vision_start|> before it is replaced too
    assert [t.finish for t in turns] == ["forced"] * 3 + ["length"]
    assert traces[0].tool_calls == [[1, 2], [3], [5, 6, 7]] and traces[0].status == "truncated"
    assert all(t.ttft_s > 0 and t.decode_s >= 0 for t in turns)
    assert turns[1].images[-2:] == [envs[0].frame(0), envs[0].frame(1)]
    assert len(turns[1].videos) == (0 if images else 1) and len(turns[1].images) == (10 if images else 2)


def test_cache_cut_inside_an_image_of_another_row(tiny):
    """The batch cache is cut at the earliest row's divergence; another row re-prefills from the same slot,
    which here falls inside one of its images (it then gets the features of that image's uncached tokens). Row 1's
    larger frames (9 tokens each, against 4) shift its images against row 0's cut."""
    model, processor = tiny()
    envs = [make_env(0), make_env(1, memory_window=None, size=84)]
    scripts = [[call([1]), call([5]), call([6])], [call([9]), call([7]), call([8])]]
    traces = HFRolloutEngine(model, processor, record_logits=True).rollout(envs, GREEDY, forced=scripts)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    turn = traces[1].turns[2]
    assert turn.context_ids[turn.reused_tokens - 1] == image_id == turn.context_ids[turn.reused_tokens]
    for env, trace in zip(envs, traces):
        for t, turn in enumerate(trace.turns):
            context, ref = reference_logits(model, processor, env, t, turn.generated_ids)
            assert turn.context_ids == context
            torch.testing.assert_close(turn.logits, ref, atol=ATOL, rtol=0)


def _strict_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA that refuses a query row allowed to attend to no key (GPU kernels may return NaN for it)."""
    if attention_mask is not None:
        assert attention_mask.any(dim=-1).all(), "a query row attends to nothing"
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def test_no_query_attends_to_nothing_with_ragged_first_turns(tiny):
    """First-turn contexts of different lengths share one forward without a fully masked query row, and the
    logits stay equal to a full prefill."""
    AttentionInterface.register("strict_sdpa", _strict_sdpa)
    AttentionMaskInterface.register("strict_sdpa", sdpa_mask)
    _, processor = tiny()
    model = AutoModelForImageTextToText.from_pretrained(
        tiny.root / "qwen2_5_vl", dtype=torch.float32, attn_implementation="strict_sdpa"
    ).eval()
    envs = [make_env(0), make_env(1, prompt="a much longer prompt about a ball that rolls down a hill")]
    scripts = [[call([1, 2]), call([3])], [call([4])]]
    traces = HFRolloutEngine(model, processor, record_logits=True).rollout(envs, GREEDY, forced=scripts)
    assert len(traces[0].turns[0].context_ids) != len(traces[1].turns[0].context_ids)
    for env, trace in zip(envs, traces):
        for t, turn in enumerate(trace.turns):
            _, ref = reference_logits(model, processor, env, t, turn.generated_ids)
            torch.testing.assert_close(turn.logits, ref, atol=ATOL, rtol=0)


def test_full_reprefill_mode_gives_the_same_logits(tiny):
    model, processor = tiny()
    cached = HFRolloutEngine(model, processor, record_logits=True).rollout([make_env(0)], GREEDY, [SCRIPTS[0]])
    full = HFRolloutEngine(model, processor, cache_reuse=False, record_logits=True).rollout(
        [make_env(0)], GREEDY, [SCRIPTS[0]]
    )
    assert [t.generated_ids for t in cached[0].turns] == [t.generated_ids for t in full[0].turns]
    assert max_diff(cached[0], full[0]) <= ATOL
    assert all(t.reused_tokens == 0 and t.prefilled_tokens == len(t.context_ids) for t in full[0].turns)


def test_batch_equals_single_episodes(tiny):
    model, processor = tiny()
    sampling = SamplingConfig(max_new_tokens=10, do_sample=True, top_k=50, top_p=0.9, temperature=0.8, seed=7)
    engine = HFRolloutEngine(model, processor, record_logits=True)
    batch = engine.rollout([make_env(0), make_env(1)], sampling, forced=SCRIPTS)
    for i in range(2):
        # Episode i samples from seed + i whatever its batch, so alone it is run with that seed.
        alone = engine.rollout([make_env(i)], SamplingConfig(**{**sampling.__dict__, "seed": 7 + i}), [SCRIPTS[i]])
        assert [t.generated_ids for t in alone[0].turns] == [t.generated_ids for t in batch[i].turns]
        assert max_diff(alone[0], batch[i]) <= ATOL


def test_greedy_is_deterministic_and_sampling_follows_the_seed(tiny):
    model, processor = tiny()
    engine = HFRolloutEngine(model, processor)

    def tokens(sampling):
        trace = engine.rollout([make_env(0, max_turns=2)], sampling)[0]
        return [t.generated_ids for t in trace.turns]

    assert tokens(GREEDY) == tokens(GREEDY)
    sampled = SamplingConfig(max_new_tokens=12, do_sample=True, seed=1)
    assert tokens(sampled) == tokens(sampled)
    assert tokens(sampled) != tokens(SamplingConfig(max_new_tokens=12, do_sample=True, seed=2))
    assert tokens(sampled) != tokens(GREEDY)


def test_turn_ends_at_stop_string_and_stop_token(tiny):
    model, processor = tiny()
    tok = processor.tokenizer
    greedy = HFRolloutEngine(model, processor).rollout([make_env(0, max_turns=2)], GREEDY)[0].turns[0].generated_ids
    # A token whose text is readable and new in the greedy sequence ends the turn there.
    texts = [tok.decode([t]) for t in greedy]
    j = next(i for i, text in enumerate(texts) if "\ufffd" not in text and text not in tok.decode(greedy[:i]))
    stop = tok.decode([greedy[j]])

    by_string = SamplingConfig(max_new_tokens=12, do_sample=False, stop_strings=(stop,))
    turn = HFRolloutEngine(model, processor).rollout([make_env(0, max_turns=2)], by_string)[0].turns[0]
    assert (turn.generated_ids, turn.finish) == (greedy[: j + 1], "stop_string")
    assert turn.text.endswith(stop)

    stop_model = copy.copy(model)
    stop_model.generation_config = copy.deepcopy(model.generation_config)
    stop_model.generation_config.eos_token_id = [greedy[j]]
    env = make_env(0, max_turns=2)
    first = HFRolloutEngine(stop_model, processor).rollout([env], by_string)[0].turns[0]
    assert (first.generated_ids, first.finish) == (greedy[: j + 1], "stop_token")
    assert first.text == tok.decode(greedy[:j])  # the stop token is not part of the text the env sees
    # In a later context the template's end-of-turn marker follows the turn's other tokens.
    messages = [*env.messages(), {"role": "user", "content": [{"type": "text", "text": "next"}]}]
    later = ConversationBuilder(processor).build(messages, [], [greedy[:j]])
    start = len(first.context_ids)
    assert later.ids[start : start + j + 1].tolist() == greedy[:j] + [tok.convert_tokens_to_ids("<|im_end|>")]


def test_vision_placeholders_are_never_generated(tiny):
    model, processor = tiny()
    biased = copy.deepcopy(model)
    vocab = processor.tokenizer.get_vocab()
    head = torch.nn.Linear(biased.lm_head.in_features, biased.lm_head.out_features, bias=True)
    head.weight.data.zero_()
    head.bias.data.zero_()
    head.bias.data[vocab["<|image_pad|>"]] = 100.0
    head.bias.data[vocab["<|vision_start|>"]] = 90.0
    head.bias.data[vocab["A"]] = 50.0
    biased.lm_head = head
    turn = HFRolloutEngine(biased, processor).rollout([make_env(0, max_turns=2)], GREEDY)[0].turns[0]
    assert turn.generated_ids == [vocab["A"]] * GREEDY.max_new_tokens


def test_template_that_rewrites_history_is_refused(tiny):
    model, processor = tiny()
    rewriting = copy.deepcopy(processor)
    # A template that drops the reasoning of earlier assistant turns (as some reasoning templates do).
    rewriting.chat_template = TOOL_CHAT_TEMPLATE.replace(
        "{{- content_item.text }}", "{{- content_item.text.split('</think>')[-1] }}"
    )
    with pytest.raises(RolloutError, match="verbatim"):
        HFRolloutEngine(model, rewriting).rollout([make_env(0)], GREEDY, forced=[[call([1])]])


def test_bad_arguments_are_refused(tiny):
    model, processor = tiny()
    engine = HFRolloutEngine(model, processor)
    with pytest.raises(ValueError, match="forced has 1 entries for 2 envs"):
        engine.rollout([make_env(0), make_env(1)], GREEDY, forced=[[call([1])]])
    with pytest.raises(ValueError, match="empty"):
        engine.rollout([make_env(0)], GREEDY, forced=[[""]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


@pytest.mark.parametrize("images", [False, True])
def test_vllm_prompt_has_one_placeholder_per_image_or_video(tiny, images):
    """The vLLM backend (GPU, not run here) sends the same context with each item's tokens collapsed to one."""
    _, processor = tiny()
    env = make_env(0, images=images)
    builder = ConversationBuilder(processor)
    ctx = builder.build(env.reset(), env.tools, [])
    collapsed = _collapse_media(ctx, builder)
    unexpanded = processor.tokenizer(
        processor.apply_chat_template(env.messages(), add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    assert collapsed == unexpanded
    assert collapsed.count(builder.image_token_id) == len(ctx.images) == (8 if images else 0)
    assert collapsed.count(builder.video_token_id) == len(ctx.videos) == (0 if images else 1)


def test_later_turns_sample_at_their_own_temperature(tiny):
    """With the first turn forced, the second turn's tokens follow ``later_temperature`` alone."""
    model, processor = tiny()
    engine = HFRolloutEngine(model, processor)

    def second_turn(sampling):
        trace = engine.rollout([make_env(0, max_turns=2)], sampling, forced=[[call([1])]], seeds=[11])[0]
        return trace.turns[1].generated_ids

    split = second_turn(SamplingConfig(max_new_tokens=10, temperature=1.0, later_temperature=0.02))
    assert split == second_turn(SamplingConfig(max_new_tokens=10, temperature=0.02))
    assert split != second_turn(SamplingConfig(max_new_tokens=10, temperature=20.0))
    assert SamplingConfig(temperature=1.0, later_temperature=0.9).temperature_at(0) == 1.0
    assert SamplingConfig(temperature=1.0, later_temperature=0.9).temperature_at(2) == 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_turns_match_full_prefill_on_gpu(tiny):
    """Same check on CUDA (fp32, TF32 off), where SDPA kernels differ from the CPU ones."""
    model, processor = tiny()
    gpu_model = copy.deepcopy(model).to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    envs = [make_env(0), make_env(1, prompt="a much longer prompt about a ball that rolls down a hill")]
    traces = HFRolloutEngine(gpu_model, processor, record_logits=True).rollout(envs, GREEDY, forced=SCRIPTS)
    for env, trace in zip(envs, traces):
        for t, turn in enumerate(trace.turns):
            assert torch.isfinite(turn.logits).all()
            _, ref = reference_logits(gpu_model, processor, env, t, turn.generated_ids)
            torch.testing.assert_close(turn.logits, ref, atol=1e-4, rtol=0)


def test_episode_seed_is_a_hash_of_its_keys():
    assert episode_seed(0, "p0", 1) == 7128917825690281717  # sha256("0:p0:1"), first 8 bytes little-endian, >> 1
    assert episode_seed(0, "p0", 2) == 4190317396093986562
    assert episode_seed(1, "p0", 1) == 8577957688225636906
    assert torch.Generator().manual_seed(episode_seed("a", 2**70)).initial_seed() == episode_seed("a", 2**70)


def test_per_episode_seeds_make_samples_independent_of_batch_mates(tiny):
    """Sampled (nothing forced): an episode with seed s gives the same tokens alone, first or last in a batch, next
    to any other episodes; the default seeds (sampling.seed + i) follow the position instead."""
    model, processor = tiny()
    engine = HFRolloutEngine(model, processor)
    sampling = SamplingConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=5)

    def tokens(envs: list[int], seeds: list[int] | None) -> list[list[list[int]]]:
        traces = engine.rollout([make_env(e, max_turns=2) for e in envs], sampling, seeds=seeds)
        return [[t.generated_ids for t in trace.turns] for trace in traces]

    alone = tokens([0], [101])[0]
    assert tokens([0, 1, 2], [101, 7, 8])[0] == alone
    assert tokens([2, 1, 0], [8, 9, 101])[2] == alone
    assert tokens([0], [102])[0] != alone
    by_position = tokens([1, 0], None)[1]  # episode 0 in second place samples with seed 5 + 1
    assert by_position == tokens([0], [6])[0]
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 envs"):
        engine.rollout([make_env(0), make_env(1)], sampling, seeds=[1])
