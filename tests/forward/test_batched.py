"""Batched inference forward (mmreward.forward.batched / batched_vision): same rewards as RewardModel.score."""

import pytest
import torch

import mmreward.forward.batched as batched_forward
from mmreward.forward.batched import batched_rewards, length_groups, right_align, rope_positions, unique_media
from mmreward.forward.vision import segment_attention, vision_features, vision_outputs
from mmreward.collate import CollateConfig
from mmreward.data.records import read_records
from mmreward.data.media import MediaConfig
from mmreward.evaluation.scorers import RewardModelScorer, load_pair_media
from mmreward.evaluation.tensor_processor import TensorProcessor

# ------------------------------------------------------------------------------------ pure functions


def test_rope_positions_exact_for_an_image_and_a_video():
    # Row 0: 2 text tokens, a (1, 4, 6) image = 1 x 2 x 3 merged tokens, 2 text tokens, 1 pad.
    # Row 1: 1 text token, a (2, 2, 2) video = 2 x 1 x 1 tokens 3.0 positions apart, 1 text token.
    ids = torch.zeros(2, 11, dtype=torch.long)
    types = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], [0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 10 + [0], [1] * 4 + [0] * 7])
    pos = rope_positions(ids, types, mask, spatial_merge_size=2, tokens_per_second=2,
                         image_grid_thw=torch.tensor([[1, 4, 6]]), video_grid_thw=torch.tensor([[2, 2, 2]]),
                         second_per_grid_ts=torch.tensor([1.5]))
    # The image starts at 2; the text after it continues at 2 + max(4, 6) / 2 = 5.
    assert pos[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 0],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 0],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 0],
    ]
    # The video starts at 1; its second temporal patch is 2 * 1.5 = 3 positions later.
    assert pos[:, 1, :4].tolist() == [[0, 1, 4, 2], [0, 1, 1, 2], [0, 1, 1, 2]]
    assert pos[:, 1, 4:].eq(0).all()


def test_rope_positions_refuses_grids_that_do_not_match_the_tokens():
    ids = torch.zeros(1, 4, dtype=torch.long)
    types = torch.tensor([[0, 1, 1, 0]])
    mask = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="1 image token runs in the batch but 0 image grids"):
        rope_positions(ids, types, mask, 2, 2)
    with pytest.raises(ValueError, match="runs of \\[2\\] tokens for grids of \\[1\\]"):
        rope_positions(ids, types, mask, 2, 2, image_grid_thw=torch.tensor([[1, 2, 2]]))


def test_right_align_moves_left_padding_to_the_end():
    inputs = {"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
              "mm_token_type_ids": torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]]),
              "pixel_values": torch.ones(2, 3)}
    out = right_align(inputs)
    assert out["input_ids"].tolist() == [[5, 6, 0, 0], [7, 8, 9, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["mm_token_type_ids"].tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert out["pixel_values"] is inputs["pixel_values"]


def test_length_groups_split_only_where_padding_costs_more_than_a_call():
    lengths = [10, 100, 12, 98]
    # Together: 1 call + 4 x 100 = 450 (cost 50); apart: 2 calls + 2 x 12 + 2 x 100 = 324.
    assert length_groups(lengths, call_cost=50) == [[0, 2], [3, 1]]
    assert length_groups(lengths, call_cost=1000) == [[0, 2, 3, 1]]
    assert length_groups([], call_cost=10) == []


def test_unique_media_finds_repeated_items():
    grid = torch.tensor([[1, 2, 2], [1, 2, 2], [1, 2, 4], [1, 2, 2]])
    a, b = torch.ones(4, 3), torch.full((4, 3), 2.0)
    wide = torch.zeros(8, 3)
    # Items 0 and 3 are equal; item 1 has the same grid and pixel sum as neither.
    pixels = torch.cat([a, b, wide, a])
    assert unique_media(pixels, grid) == ([0, 1, 2], [0, 1, 2, 0])
    # Same grid and same pixel sum, different pixels: kept apart.
    swapped = torch.cat([a, a.flip(0) * torch.tensor([[2.0], [0.0], [1.0], [1.0]])])
    assert unique_media(swapped, grid[:2]) == ([0, 1], [0, 1])


def test_segment_attention_matches_one_call_per_segment():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(13, 2, 4, generator=g) for _ in range(3))
    lengths = [4, 4, 5]  # two equal windows and one longer
    starts = {4: torch.tensor([0, 4]), 5: torch.tensor([8])}
    got = segment_attention(q, k, v, starts, scale=0.5)
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        want = torch.nn.functional.scaled_dot_product_attention(
            *(x[sl].transpose(0, 1)[None] for x in (q, k, v)), scale=0.5)[0].transpose(0, 1)
        torch.testing.assert_close(got[sl], want)
        start += n


# ------------------------------------------------------------------------------------ tiny models


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("syn")
    generate_synthetic(out, seed=0, config=SyntheticConfig(image_splits=SplitSizes(1, 1, 5),
                                                           video_splits=SplitSizes(1, 1, 3)))
    return out


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from mmreward.backbones.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def family_dirs(vlm_dir, tmp_path_factory):
    """Tiny backbones of every family the batched forward handles."""
    from mmreward.backbones.tiny import build_tiny_vlm

    return {"qwen2_5_vl": vlm_dir, "qwen2_vl": build_tiny_vlm(tmp_path_factory.mktemp("q2"), family="qwen2_vl"),
            "qwen3_vl": build_tiny_vlm(tmp_path_factory.mktemp("q3"), family="qwen3_vl")}


FAMILIES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_features_equal_the_towers_own(family_dirs, family):
    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm

    model, _ = load_vlm(VLMLoadConfig(path=str(family_dirs[family])))
    visual = model.model.visual
    # Qwen2.5-VL: one window per small image, several (of unequal size) for the larger grids;
    # both: frames of equal and unequal size, 4 frames for a video.
    grid = torch.tensor([[1, 6, 6], [1, 6, 6], [1, 12, 8], [4, 6, 6], [2, 20, 14]])
    patch = visual.patch_embed
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * patch.temporal_patch_size * patch.patch_size ** 2,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = visual(pixels, grid_thw=grid)
        got, deepstack = vision_outputs(visual, pixels, grid)
        assert torch.equal(vision_features(visual, pixels, grid), got)
    torch.testing.assert_close(got, want.pooler_output, atol=1e-5, rtol=1e-5)
    want_deepstack = getattr(want, "deepstack_features", None) or []  # Qwen3-VL only
    assert len(deepstack) == len(want_deepstack) == (1 if family == "qwen3_vl" else 0)
    for mine, theirs in zip(deepstack, want_deepstack):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def _examples(synthetic, modality, responses="some"):
    """Pairs of the synthetic test split; responses "some" (of different lengths, some sides without),
    "all" (every side has one) or "none"."""
    records = list(read_records(synthetic / modality / "test.jsonl"))
    for i, rec in enumerate(records):
        rec.a.response = None if responses == "none" else "a longer answer " * i
        rec.b.response = None if responses == "none" or (responses == "some" and i % 2) else "b" * (i + 1)
    return [load_pair_media(rec, MediaConfig(num_frames=4)) for rec in records]


# (head, dimensions, options, responses the head can score)
HEADS = [("scalar", ["VQ", "TA"], {}, "some"), ("yes_token", ["TA"], {}, "some"),
         ("yes_token", ["TA"], {"form": "pairwise"}, "all"), ("reward_token", ["VQ", "TA"], {}, "none")]


@pytest.mark.parametrize("head,dims,options,responses", HEADS,
                         ids=["scalar", "yes_token", "yes_token_pairwise", "reward_token"])
@pytest.mark.parametrize("modality", ["images", "videos"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rewards_equal_the_model_scoring_each_pair_alone(family_dirs, synthetic, family, head, dims, options,
                                                                  responses, modality):
    from mmreward.model import RewardModel

    model = RewardModel.from_backbone(family_dirs[family], head=head, dimensions=dims, head_options=options).eval()
    examples = _examples(synthetic, modality, responses)
    for padding_side in ("right", "left"):
        collator = model.head.pair_collator(model.processor, CollateConfig(padding_side=padding_side))
        inputs = collator(examples)["inputs"]
        inner = model._inner()
        media = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
        aligned = right_align(inputs)
        want_pos, _ = inner.get_rope_index(aligned["input_ids"], mm_token_type_ids=aligned["mm_token_type_ids"],
                                           attention_mask=aligned["attention_mask"], **media)
        tokens_per_second, seconds, video_grid = batched_forward._rope_video_args(inner, inputs)
        got_pos = rope_positions(aligned["input_ids"], aligned["mm_token_type_ids"], aligned["attention_mask"],
                                 inner.config.vision_config.spatial_merge_size, tokens_per_second,
                                 inputs.get("image_grid_thw"), video_grid, seconds)
        assert torch.equal(got_pos, want_pos)
        with torch.inference_mode():
            got = batched_rewards(model, inputs)
            alone = [model.score(collator([ex])["inputs"]) for ex in examples]
        want = torch.cat([torch.stack([r[0] for r in alone]), torch.stack([r[1] for r in alone])])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head,dims", [("scalar", ["VQ", "TA"]), ("reward_token", ["VQ", "MQ", "TA"])])
def test_batched_rewards_with_sequential_positions(family_dirs, synthetic, head, dims):
    """VideoAlign's positions (0..L-1 on every axis): the batched forward gives `model.score`'s rewards, which
    differ from the M-RoPE model's."""
    from mmreward.model import RewardModel, ScoringSettings

    settings = ScoringSettings.for_dimensions(dims, positions="sequential")
    model = RewardModel.from_backbone(family_dirs["qwen2_vl"], head=head, dimensions=dims, settings=settings).eval()
    examples = _examples(synthetic, "videos", "none")
    for padding_side in ("right", "left"):
        collator = model.head.pair_collator(model.processor, CollateConfig(padding_side=padding_side))
        inputs = collator(examples)["inputs"]
        with torch.inference_mode():
            got = batched_rewards(model, inputs)
            want = model.score(inputs)
            model.settings.positions = "mrope"
            mrope = model.score(inputs)
            model.settings.positions = "sequential"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (mrope - want).abs().max() > 1e-4


def test_response_pairs_encode_their_shared_image_once(vlm_dir, synthetic, monkeypatch):
    from mmreward.model import RewardModel

    model = RewardModel.from_backbone(vlm_dir, dimensions=["VQ", "TA"]).eval()
    examples = _examples(synthetic, "images", "all")[:3]
    for ex in examples:  # both sides show side a's image
        ex.b.images = list(ex.a.images)
    collator = model.head.pair_collator(model.processor, CollateConfig())
    inputs = collator(examples)["inputs"]
    encoded = []
    real = batched_forward.vision_outputs
    monkeypatch.setattr(batched_forward, "vision_outputs",
                        lambda visual, pixels, grid: encoded.append(len(grid)) or real(visual, pixels, grid))
    with torch.inference_mode():
        got = batched_rewards(model, inputs)
        want = model.score(inputs)
    assert encoded == [3]  # six sequences, three distinct images
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_scorer_uses_the_batched_forward_where_it_reproduces_the_model(family_dirs, synthetic, monkeypatch):
    from mmreward.model import RewardModel

    model = RewardModel.from_backbone(family_dirs["qwen2_5_vl"], dimensions=["VQ", "TA"]).eval()
    scorer = RewardModelScorer(model)
    assert batched_forward.supports_batched_rewards(model)
    for family in ("qwen2_vl", "qwen3_vl"):
        other = RewardModel.from_backbone(family_dirs[family], dimensions=["overall"])
        assert batched_forward.supports_batched_rewards(other)
    # Eager attention would need the padding mask the batched forward drops: the scorer uses model.score.
    eager = RewardModel.from_backbone(family_dirs["qwen2_5_vl"], dimensions=["overall"], attn_implementation="eager")
    assert not batched_forward.supports_batched_rewards(eager)
    with pytest.raises(TypeError, match="Qwen2-VL, Qwen2.5-VL and Qwen3-VL backbones only"):
        batched_rewards(eager, {})
    calls = []
    monkeypatch.setattr(batched_forward, "batched_rewards",
                        lambda m, inputs: calls.append(len(inputs["input_ids"])) or batched_rewards(m, inputs))
    # The batch of two pairs scores each pair as the model does alone, through one batched forward.
    examples = _examples(synthetic, "images")[:2]
    scores = scorer.score(scorer.collate(examples))
    assert calls == [4]
    for ex, score in zip(examples, scores):
        rewards = model.score(scorer.collator([ex])["inputs"])
        assert score.score_a["VQ"] == pytest.approx(float(rewards[0, 0]), abs=1e-5)
        assert score.score_b["TA"] == pytest.approx(float(rewards[1, 1]), abs=1e-5)
    RewardModelScorer(eager).score(RewardModelScorer(eager).collate(examples[:1]))
    assert calls == [4]  # eager: model.score, not the batched forward


@pytest.mark.parametrize("modality", ["images", "videos"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_processor_returns_the_processors_own_batch(family_dirs, synthetic, family, modality):
    from transformers import AutoProcessor

    from mmreward.collate import encode_sides

    processor = AutoProcessor.from_pretrained(family_dirs[family])
    examples = _examples(synthetic, modality)
    prompts = [ex.record.prompt for ex in examples] * 2
    sides = [ex.a for ex in examples] + [ex.b for ex in examples]
    for padding_side in ("right", "left"):
        cfg = CollateConfig(padding_side=padding_side)
        want = encode_sides(processor, prompts, sides, cfg)
        got = encode_sides(TensorProcessor(processor), prompts, sides, cfg)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_unique_media_with_equal_sums_but_different_pixels_among_repeats():
    grid = torch.tensor([[1, 2, 2]] * 4)
    a = torch.ones(4, 3)
    b = a.flip(0) * torch.tensor([[2.0], [0.0], [1.0], [1.0]])  # same sum as a, other pixels
    # a, b, b, a: both repeats are found although a and b collide on (grid, sum).
    assert unique_media(torch.cat([a, b, b, a]), grid) == ([0, 1], [0, 1, 1, 0])
    # Every pair of a response-pair batch repeats its image: a sides first, then b sides.
    images = [torch.full((4, 3), float(i)) for i in range(3)]
    assert unique_media(torch.cat(images + images), torch.tensor([[1, 2, 2]] * 6)) == ([0, 1, 2], [0, 1, 2, 0, 1, 2])
