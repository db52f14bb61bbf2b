"""Records -> processor inputs: chat layout, padding, read positions, labels, pair order."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import (
    CollateConfig,
    CollateError,
    PairCollator,
    build_messages,
    encode_sides,
    last_token_index,
    pair_labels,
    processor_image_size,
    processor_media,
    shares_prefix,
)
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.media import VideoClip, load_image
from mmreward.data.records import PreferenceRecord, Side


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path_factory.mktemp("tiny")))


def _image(color, size=(84, 84)):
    return Image.new("RGB", size, color)


def _example(i, a: SideMedia, b: SideMedia, label=None, prompt=None, same_media=False):
    def side(media: SideMedia, name):
        paths = [Path(f"/m/{i}_{name if not same_media else 'x'}_{j}.png") for j in range(len(media.images))]
        return Side(images=paths, response=media.response)

    record = PreferenceRecord(
        id=f"r{i}", prompt=prompt or f"prompt number {i}" + "!" * i, a=side(a, "a"), b=side(b, "b"),
        label=label or {"overall": "a"},
    )
    return PreferenceExample(record, a, b)


def test_last_token_index_exact():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_build_messages_layout():
    clip = VideoClip(np.zeros((2, 4, 4, 3), np.uint8), np.array([0.0, 0.5]), np.array([0, 1]), 2.0, 2)
    cfg = CollateConfig(prompt_template="Prompt: {prompt}", system_prompt="Judge.")
    msgs = build_messages("a cat", SideMedia(images=[_image(0), _image(1)], video=clip, response="ok"), cfg)
    assert msgs == [
        {"role": "system", "content": [{"type": "text", "text": "Judge."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "video"},
                                     {"type": "text", "text": "Prompt: a cat"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    assert build_messages("x", SideMedia(), CollateConfig())[-1]["role"] == "user"


def test_bad_config():
    with pytest.raises(ValueError, match="padding_side"):
        CollateConfig(padding_side="middle")
    with pytest.raises(ValueError, match="pair_form"):
        CollateConfig(pair_form="fast")
    with pytest.raises(ValueError, match="{prompt}"):
        CollateConfig(prompt_template="no placeholder")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_keeps_sequences_and_read_position(processor, side):
    prompts = ["short", "a much longer prompt than the first one"]
    sides = [SideMedia(images=[_image((255, 0, 0))]), SideMedia(images=[_image((0, 0, 255), (112, 84))], response="yes")]
    batch = encode_sides(processor, prompts, sides, CollateConfig(padding_side=side))
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] != lengths[1]  # padding really happens
    index = last_token_index(batch["attention_mask"])
    for i in range(2):
        single = encode_sides(processor, prompts[i : i + 1], sides[i : i + 1], CollateConfig())
        kept = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert torch.equal(kept, single["input_ids"][0])
        assert batch["input_ids"][i, index[i]] == single["input_ids"][0, -1]
    if side == "left":
        assert index.tolist() == [batch["input_ids"].shape[1] - 1] * 2
    else:
        assert index.tolist() == (lengths - 1).tolist()
    # Sides without a response end at the generation prompt, with a response at the end of its turn.
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert texts[0].replace("<|endoftext|>", "").endswith("<|im_start|>assistant\n")
    assert texts[1].replace("<|endoftext|>", "").endswith("yes<|im_end|>\n")


def test_video_metadata_sets_temporal_spacing(processor):
    # 8 frames sampled from a 16-frame 8 fps clip: 4 sampled frames/s, 2 frames per temporal patch.
    clip = VideoClip(
        np.random.default_rng(0).integers(0, 255, (8, 84, 84, 3), dtype=np.uint8),
        np.arange(0, 16, 2) / 8.0, np.arange(0, 16, 2), 8.0, 16,
    )
    batch = encode_sides(processor, ["moving"], [SideMedia(video=clip)], CollateConfig())
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([0.5])
    assert batch["video_grid_thw"][0, 0].item() == 4  # 8 frames / temporal patch 2


def test_processor_media_gives_the_processors_own_pixels(processor):
    """uint8 tensors in, the same pixels and grids out as for PIL images and [T, H, W, 3] arrays."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(84, 84), (100, 57), (300, 200), (33, 61)]]  # the last two are resized by the processor
    images.append(Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)))  # grey: passed as is
    clips = [VideoClip(rng.integers(0, 255, (n, 56, 84, 3), dtype=np.uint8), np.arange(n) / 4.0,
                       np.arange(n), 4.0, n) for n in (4, 8)]
    media = processor_media(images, clips)
    assert [type(img).__name__ for img in media["images"]] == ["Tensor"] * 4 + ["Image"]
    texts = ["<|vision_start|><|image_pad|><|vision_end|>" * len(images) + "<|vision_start|><|video_pad|><|vision_end|>" * 2]
    got = processor(text=texts, return_tensors="pt", **media)
    want = processor(text=texts, images=images, videos=[clip.frames for clip in clips], return_tensors="pt",
                     video_metadata=media["video_metadata"], do_sample_frames=False)
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_pair_labels_exact():
    records = [
        PreferenceRecord("x", "p", Side(response="1"), Side(response="2"), {"overall": "a", "TA": "tie"}),
        PreferenceRecord("y", "p", Side(response="1"), Side(response="2"), {"overall": "b", "VQ": "a"}),
    ]
    labels, mask = pair_labels(records, ["VQ", "TA", "overall"])
    assert labels.tolist() == [[0, 0, 1], [1, 0, -1]]
    assert mask.tolist() == [[False, True, True], [True, False, True]]


def test_pair_collator_orders_a_then_b(processor):
    examples = [
        _example(i, SideMedia(images=[_image((i * 40, 0, 0))]), SideMedia(images=[_image((0, i * 40, 0))]),
                 label={"overall": "b", "TA": "a"})
        for i in range(3)
    ]
    out = PairCollator(processor, ["TA", "overall"])(examples)
    assert set(out) == {"inputs", "labels", "label_mask"}
    assert out["labels"].tolist() == [[1, -1]] * 3 and out["label_mask"].all()
    inputs = out["inputs"]
    assert inputs["input_ids"].shape[0] == 6
    for i, ex in enumerate(examples):
        for j, side in ((i, ex.a), (i + 3, ex.b)):
            single = encode_sides(processor, [ex.record.prompt], [side], CollateConfig())
            n = single["input_ids"].shape[1]
            assert torch.equal(inputs["input_ids"][j, :n], single["input_ids"][0])
    # pixels of sequence j are the j-th image: a sides' pixels come first
    per_image = inputs["pixel_values"].shape[0] // 6
    first_b = encode_sides(processor, [examples[0].record.prompt], [examples[0].b], CollateConfig())
    assert torch.equal(inputs["pixel_values"][3 * per_image : 4 * per_image], first_b["pixel_values"])


def test_shared_prefix_selection(processor):
    img = _image((10, 200, 10))
    response_pair = _example(0, SideMedia([img], response="good"), SideMedia([img], response="bad"), same_media=True)
    image_pair = _example(1, SideMedia([img]), SideMedia([_image(0)]))
    assert shares_prefix(response_pair.record) and not shares_prefix(image_pair.record)
    auto = PairCollator(processor, ["overall"], CollateConfig(pair_form="auto"))
    assert "segment_ids" in auto([response_pair])["inputs"]
    assert "segment_ids" not in auto([response_pair, image_pair])["inputs"]  # one ineligible pair: naive
    strict = PairCollator(processor, ["overall"], CollateConfig(pair_form="shared_prefix"))
    with pytest.raises(CollateError, match=r"\['r1'\]"):
        strict([response_pair, image_pair])


def test_shared_prefix_needs_every_media_file_equal(tmp_path):
    """Sides that differ only in their video are not a response pair (the video must not be dropped)."""
    image, v1, v2 = tmp_path / "i.png", tmp_path / "1.mp4", tmp_path / "2.mp4"

    def record(video_b, images_b=()):
        return PreferenceRecord("r", "p", Side(image=image, video=v1, response="x"),
                                Side(image=image, images=list(images_b), video=video_b, response="y"), {"overall": "a"})

    assert shares_prefix(record(v1))
    assert not shares_prefix(record(v2))
    assert not shares_prefix(record(None))
    assert not shares_prefix(record(v1, images_b=[image]))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_images_arrive_at_the_processors_size(family, tmp_path):
    """With the processor's size rule, load_image resizes once to the size the processor would give
    the capped image: the processor's resize is then the identity, the grid is the one the old
    two-resize path gave, and the pixels match it closely."""
    processor = AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path / "m", family=family))
    rule = processor_image_size(processor)
    coarse = np.random.default_rng(1).integers(0, 256, (21, 28, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((896, 672), Image.Resampling.BICUBIC).save(tmp_path / "p.jpg", quality=95)
    cap = 336 * 252
    once = load_image(tmp_path / "p.jpg", max_pixels=cap, final_size=rule)
    assert rule(*once.size) == once.size  # a fixed point: the processor leaves it as it is
    twice = load_image(tmp_path / "p.jpg", max_pixels=cap)  # the old path: the processor resizes again
    encode = lambda img: processor.image_processor(images=[img], return_tensors="pt")  # noqa: E731
    new, old = encode(once), encode(twice)
    assert new["image_grid_thw"].tolist() == old["image_grid_thw"].tolist()
    patch = processor.image_processor.patch_size
    assert new["image_grid_thw"][0, 1:].tolist() == [once.size[1] // patch, once.size[0] // patch]
    assert (new["pixel_values"] - old["pixel_values"]).abs().mean() < 0.05
    assert processor_image_size(object()) is None


def test_max_length_names_records(processor):
    examples = [_example(7, SideMedia(response="x" * 50), SideMedia(response="y"))]
    with pytest.raises(CollateError, match=r"max_length=40.*'r7'"):
        PairCollator(processor, ["overall"], CollateConfig(max_length=40))(examples)
    with pytest.raises(CollateError, match="empty batch"):
        PairCollator(processor, ["overall"])([])


def test_read_only_frames_go_to_the_processor_without_a_warning(processor, recwarn):
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    frames.flags.writeable = False  # as the frame pool hands them out
    clip = VideoClip(frames, np.arange(4) / 4.0, np.arange(4), 4.0, 4)
    batch = encode_sides(processor, ["moving"], [SideMedia(video=clip)], CollateConfig())
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert not [w for w in recwarn if "not writable" in str(w.message)]
