"""SFT rows follow the memory window exactly, and the loss falls on the trained assistant turns only."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.chat_template_utils import qwen3_vl_chat_template, qwen3_vl_training_chat_template

from mmreward.backbones.tiny import build_tiny_vlm
from vr_thinker.cold_start import EpisodeTrace
from vr_thinker.env import VideoPairEnv, frame_pool_from_arrays
from vr_thinker.presets import load_preset
from vr_thinker.protocol import assistant_message
from vr_thinker.sft_data import (
    IGNORE_INDEX,
    TraceRows,
    VRThinkerSFTCollator,
    episode_rows,
    training_chat_template,
)

ANSWER = "<synthesis>s</synthesis>\n<think>Decide.</think>\n<final answer>TA=0, VQ=1, MQ=2, OA=1</final answer>"


def preset(window=1):
    return load_preset("vr-thinker", ["frames.per_video=8", f"limits.memory_window={'null' if window is None else window}",
                                      'prompt.system="Judge."', 'prompt.first_turn="Prompt: {prompt}"'])


def call(frames) -> str:
    body = json.dumps({"name": "select_frames", "arguments": {"target_frames": frames}})
    return (f"<synthesis>s</synthesis>\n<think>Look at {frames}.</think>\n<recommend answer>TA=0, VQ=1, MQ=0, OA=1, "
            f"CF=3</recommend answer>\n<tool_call>\n{body}\n</tool_call>")


def episode(turns, window=1) -> VideoPairEnv:
    rng = np.random.default_rng(0)
    pools = [frame_pool_from_arrays(rng.integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)) for _ in range(2)]
    env = VideoPairEnv("two red circles", pools[0], pools[1], preset(window))
    env.reset()
    for text in turns:
        env.step(text)
    assert env.status.value == "answered" and all(t.valid for t in env.turns)
    return env


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


# ---------------------------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize(
    "turns, window, merge, expected",
    [
        ([call([1, 2]), call([5]), ANSWER], 1, True, [[0, 1], [2]]),  # turn 2 no longer sees call 1's frames
        ([call([1, 2]), call([5]), call([6]), ANSWER], 1, True, [[0, 1], [2], [3]]),
        ([call([1, 2]), call([5]), ANSWER], None, True, [[0, 1, 2]]),  # nothing dropped: one row
        ([call([1, 2]), call([5]), ANSWER], 2, True, [[0, 1, 2]]),
        ([call([1, 2]), call([5]), ANSWER], 0, True, [[0, 1, 2]]),  # window 0: no turn ever saw tool images
        ([call([1, 2]), call([5]), ANSWER], None, False, [[0], [1], [2]]),
        ([ANSWER], 1, True, [[0]]),
    ],
)
def test_rows_follow_the_memory_window(turns, window, merge, expected):
    env = episode(turns, window)
    rows = episode_rows(env, "t", merge=merge)
    assert [r.loss_turns for r in rows] == expected
    for row in rows:
        last = row.loss_turns[-1]
        # Each row is exactly the context its last trained turn saw, plus that turn.
        assert row.messages == [*env.messages(before_turn=last), assistant_message(turns[last])]
        assert sum(m["role"] == "assistant" for m in row.messages) == last + 1


def test_merged_row_is_the_context_of_every_turn_it_trains():
    env = episode([call([1, 2]), call([5]), ANSWER], None)
    (row,) = episode_rows(env)
    for k in range(3):
        context = env.messages(before_turn=k)
        assert row.messages[: len(context)] == context


def test_example_lists_the_images_in_order():
    env = episode([call([1, 2]), ANSWER], 1)
    example = episode_rows(env, "t")[0].example()
    parts = [p for m in example["messages"] for p in (m["content"] if isinstance(m["content"], list) else [])]
    assert example["images"] == [p["image"] for p in parts if p["type"] == "image"]
    assert len(example["images"]) == 2  # the call's frames; the initial frames are one video part
    assert [p["type"] for p in parts].count("video") == 1
    assert example["loss_turns"] == [0, 1] and example["tools"] == env.tools == [] and example["trace_id"] == "t"


# ----------------------------------------------------------------------------------------------------- collator


def test_training_template_is_trls_generation_marked_twin(processor):
    assert processor.chat_template == qwen3_vl_chat_template
    assert training_chat_template(processor) == qwen3_vl_training_chat_template
    with pytest.raises(ValueError, match="generation"):
        VRThinkerSFTCollator(processor, chat_template=qwen3_vl_chat_template)


def test_labels_cover_exactly_the_trained_assistant_turns(processor):
    tok = processor.tokenizer
    turns = [call([1, 2]), call([5]), ANSWER]
    rows = episode_rows(episode(turns, 1), "t")  # rows [0, 1] and [2]
    batch = VRThinkerSFTCollator(processor)([r.example() for r in rows])
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = "<|im_end|>\n"
    for b, row in enumerate(rows):
        trained = labels[b] != IGNORE_INDEX
        assert torch.equal(labels[b][trained], ids[b][trained])
        # The labelled tokens decode to the trained turns and their end-of-turn marker, nothing else ...
        expected = "".join(turns[k] + end for k in row.loss_turns)
        assert tok.decode(ids[b][trained]) == expected
        # ... and each labelled span starts right after an assistant header.
        padded = torch.cat([torch.tensor([False]), trained, torch.tensor([False])])
        starts = torch.nonzero(torch.diff(padded.int()) == 1).flatten().tolist()
        assert len(starts) == len(row.loss_turns)
        for s in starts:
            assert ids[b][s - len(header) : s].tolist() == header
        # System, user and tool tokens (images included) and padding carry no loss.
        assert not trained[ids[b] == tok.convert_tokens_to_ids("<|image_pad|>")].any()
        assert not trained[attention[b] == 0].any()
    # Row 1 holds turns 0 and 1 as context only: their text is in the input but not in the labels.
    context_only = tok.decode(ids[1][attention[1] == 1])
    assert turns[0] in context_only and turns[1] in context_only
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == int(
        batch["image_grid_thw"].prod(-1).sum()) // processor.image_processor.merge_size ** 2
    # One video per row (the initial frames), placed in time at the protocol's 2 frames per second.
    assert batch["video_grid_thw"].shape[0] == 2 and batch["second_per_grid_ts"].tolist() == [1.0, 1.0]


def test_masked_tokens_get_zero_gradient(processor, tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    rows = episode_rows(episode([call([1, 2]), call([5]), ANSWER], 1), "t")
    batch = VRThinkerSFTCollator(processor)([rows[1].example()])
    captured = {}
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: captured.update(logits=out) or out.retain_grad())
    model(**batch).loss.backward()
    handle.remove()
    grad = captured["logits"].grad[0].abs().sum(-1)  # [seq]
    predicts_label = torch.zeros_like(grad, dtype=torch.bool)
    predicts_label[:-1] = batch["labels"][0, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    assert (grad[~predicts_label] == 0).all()
    assert (grad[predicts_label] > 0).all()
    assert int(predicts_label.sum()) == len(processor.tokenizer(ANSWER + "<|im_end|>\n")["input_ids"])


def test_overlong_rows_and_mixed_tool_schemas_are_refused(processor):
    rows = episode_rows(episode([ANSWER], 1), "t")
    with pytest.raises(ValueError, match=r"traces \['t'\] has \d+ tokens > max_length=50"):
        VRThinkerSFTCollator(processor, max_length=50)([rows[0].example()])
    other = rows[0].example()
    other["tools"] = [{"type": "function", "function": {"name": "select_frames", "description": "x"}}]
    with pytest.raises(ValueError, match="share the tool schema"):
        VRThinkerSFTCollator(processor)([rows[0].example(), other])


def test_trace_rows_dataset_replays_traces(tmp_path, processor):
    from mmreward.data.media import write_video

    rng = np.random.default_rng(1)
    paths = []
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / name, rng.integers(0, 255, (8, 48, 48, 3), dtype=np.uint8), fps=8)
        paths.append(tmp_path / name)
    trace = EpisodeTrace("p1", "two red circles", paths[0], paths[1], [call([1, 2]), call([5]), ANSWER],
                         [[1, 2], [5]], preset=preset())
    rows = TraceRows([trace])
    assert len(rows) == 2 and rows.num_turns == 3
    data = rows.dataset()
    assert len(data) == 2 and data[1]["loss_turns"] == [2] and data[0]["trace_id"] == "p1"
    assert len(data[0]["images"]) == 2 and len(data[1]["images"]) == 1  # window 1: call 1's frames dropped
    batch = VRThinkerSFTCollator(processor)([data[0], data[1]])
    assert batch["labels"].shape == batch["input_ids"].shape
