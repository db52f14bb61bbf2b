import json

import numpy as np
import pytest

from mmreward.data.media import write_video
from vr_thinker.env import (
    EnvConfig,
    EpisodeStatus,
    VideoPairEnv,
    frame_pool_from_arrays,
    processor_token_counter,
)
from vr_thinker.rewards import TraceOutcome

DIMS = ["VQ", "MQ", "TA"]
ANSWER = "<think>done</think>\nVQ: \\boxed{1}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}"


def pool(video: int, size: int = 32) -> np.ndarray:
    """Frames whose pixels encode (video, index), so a shown image can be traced back to its frame."""
    frames = np.zeros((size, 4, 6, 3), dtype=np.uint8)
    frames[..., 0] = video
    frames[..., 1] = np.arange(size)[:, None, None]
    return frames


def make_env(size_1: int = 32, size_2: int = 32, token_counter=None, **cfg) -> VideoPairEnv:
    env = VideoPairEnv(
        "a dog runs",
        frame_pool_from_arrays(pool(1, size_1), fps=2.0),
        frame_pool_from_arrays(pool(2, size_2), fps=2.0),
        DIMS,
        EnvConfig(**cfg),
        token_counter=token_counter,
    )
    env.reset()
    return env


def tool(frames, key: str = "target_frames") -> str:
    return "<think>look closer</think>\n<tool_call>\n" + json.dumps(
        {"name": "select_frames", "arguments": {key: frames}}) + "\n</tool_call>"


def images(message) -> list[tuple[int, int]]:
    """(video, pool index) of every image in a message, read from its pixels."""
    return [
        (int(np.asarray(p["image"])[0, 0, 0]), int(np.asarray(p["image"])[0, 0, 1]))
        for p in message["content"] if p["type"] == "image"
    ]


def all_images(messages) -> list[tuple[int, int]]:
    return [im for m in messages for im in images(m)]


def test_reset_shows_initial_frames_of_both_videos():
    env = make_env()
    msgs = env.messages()
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert images(msgs[1]) == [(1, 0), (1, 10), (1, 21), (1, 31), (2, 0), (2, 10), (2, 21), (2, 31)]
    texts = [p["text"] for p in msgs[1]["content"] if p["type"] == "text"]
    assert "Video 1, frame 10 (5.00 s):\n" in texts and "Video 2, frame 31 (15.50 s):\n" in texts
    assert env.tools[0]["function"]["name"] == "select_frames"
    assert env.status == EpisodeStatus.RUNNING and not env.done


def test_initial_frames_capped_by_pool_size():
    env = make_env(size_1=2, size_2=3, initial_frames=4)
    assert images(env.messages()[1]) == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]


def test_valid_call_shows_same_indices_of_both_videos():
    env = make_env()
    res = env.step(tool([7, 3]))
    assert (res.status, res.done) == (EpisodeStatus.RUNNING, False)
    assert res.observation["role"] == "tool"
    assert images(res.observation) == [(1, 3), (2, 3), (1, 7), (2, 7)]
    assert res.info == {"turn": 0, "problems": [], "num_tool_calls": 1, "frames": [3, 7], "verdicts": {}}
    assert env.messages()[-1] is res.observation
    assert [m["role"] for m in env.messages()] == ["system", "user", "assistant", "tool"]
    assert env.messages()[2]["content"][0]["text"] == tool([7, 3])  # assistant text kept verbatim
    assert "2 tool calls left." in res.observation["content"][-1]["text"]


@pytest.mark.parametrize("frames", [[0], [31], [0, 31]])
def test_boundary_indices_are_valid(frames):
    res = make_env().step(tool(frames))
    assert res.status == EpisodeStatus.RUNNING and res.info["frames"] == frames


def test_exactly_max_frames_is_allowed():
    res = make_env().step(tool(list(range(8))))
    assert res.status == EpisodeStatus.RUNNING and len(images(res.observation)) == 16


def test_duplicates_are_dropped_before_the_limit():
    res = make_env().step(tool([5, 5, 2, 5, 2, 1, 1, 1, 1, 1]))
    assert res.status == EpisodeStatus.RUNNING
    assert res.info["frames"] == [1, 2, 5] and len(images(res.observation)) == 6
    assert "Duplicate indices were dropped" in res.observation["content"][-1]["text"]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (tool([-1]), "index_out_of_range"),
        (tool([32]), "index_out_of_range"),
        (tool([3, 1000]), "index_out_of_range"),
        (tool(list(range(9))), "too_many_frames"),
        (tool([]), "empty_frames"),
        (tool(["1", "2"]), "non_int_index"),
        (tool([1.5]), "non_int_index"),
        (tool([1], key="frames"), "wrong_key"),
        (tool(3), "not_a_list"),
        ("<think>a</think><tool_call>frames 1 and 2</tool_call>", "no_json"),
        ("<think>a</think><tool_call>{\"name\": \"select_frames\", \"arguments\": {\"target_frames\": [1,]}}"
         "</tool_call>", "invalid_json"),
        ("<think>a</think><tool_call>{\"name\": \"crop\", \"arguments\": {\"target_frames\": [1]}}</tool_call>",
         "unknown_tool"),
        (tool([1]) + tool([2]).replace("<think>look closer</think>", ""), "multiple_tool_calls"),
        (tool([1]) + "\nOverall: \\boxed{1}", "tool_call_and_answer"),
        ("<tool_call>{\"name\": \"select_frames\", \"arguments\": {\"target_frames\": [1]}}</tool_call>", "no_think"),
    ],
)
def test_broken_tool_calls_get_a_tool_error_and_a_retry(text, code):
    env = make_env()
    res = env.step(text)
    assert (res.status, res.done) == (EpisodeStatus.INVALID_TURN, False)
    assert code in res.info["problems"]
    assert res.observation["role"] == "tool" and images(res.observation) == []
    assert code in res.observation["content"][0]["text"]
    assert env.num_tool_calls == 0 and not env.turns[-1].valid and res.info["frames"] == []
    assert env.step(tool([1])).status == EpisodeStatus.RUNNING  # the retry works


@pytest.mark.parametrize(
    "text", ["", "I think video 1 is better", "<think>hmm</think>", "<think>a</think></think>", "<think>a</think>1"]
)
def test_turns_without_action_get_user_feedback(text):
    res = make_env().step(text)
    assert res.status == EpisodeStatus.INVALID_TURN and res.observation["role"] == "user"
    assert res.info["problems"]


def test_valid_episode_tool_then_answer():
    env = make_env()
    env.step(tool([4]))
    res = env.step(ANSWER)
    assert (res.status, res.done, res.observation) == (EpisodeStatus.ANSWERED, True, None)
    assert env.verdicts == res.info["verdicts"] == {"VQ": 1, "MQ": 2, "TA": 0, "overall": 1}
    assert env.outcome() == TraceOutcome({"VQ": 1, "MQ": 2, "TA": 0, "overall": 1}, [True, True], 1)
    with pytest.raises(RuntimeError, match="over"):
        env.step(ANSWER)


@pytest.mark.parametrize(
    ("text", "code", "verdicts"),
    [
        ("<think>a</think>\nVQ: 1\nMQ: 2\nTA: 0\nOverall: 1", "missing_box", {}),
        ("<think>a</think>\nVQ: \\boxed{A}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}",
         "unknown_box_value", {"MQ": 2, "TA": 0, "overall": 1}),
        ("<think>a</think>\nOverall: \\boxed{2}", "missing_verdict", {"overall": 2}),
        ("VQ: \\boxed{1}\nMQ: \\boxed{2}\nTA: \\boxed{0}\nOverall: \\boxed{1}", "no_think",
         {"VQ": 1, "MQ": 2, "TA": 0, "overall": 1}),
    ],
)
def test_invalid_answer_ends_episode_with_readable_verdicts(text, code, verdicts):
    env = make_env()
    res = env.step(text)
    assert (res.status, res.done, res.observation) == (EpisodeStatus.INVALID_ANSWER, True, None)
    assert code in res.info["problems"] and env.verdicts == verdicts
    assert env.outcome().turn_valid == [False]


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("<think>I should look at frame", False),
        ("<think>a</think>\n<tool_call>\n{\"name\": \"select_frames\", \"argum", False),
        (tool([1]), True),
        (ANSWER, True),
    ],
)
def test_output_cut_at_token_limit_ends_episode(text, flag):
    env = make_env()
    res = env.step(text, truncated=flag)
    assert (res.status, res.done, res.observation) == (EpisodeStatus.TRUNCATED, True, None)
    assert "truncated" in res.info["problems"] and env.num_tool_calls == 0


def test_tool_budget():
    env = make_env(max_tool_calls=3)
    notes = [env.step(tool([i])).observation["content"][-1]["text"] for i in range(3)]
    assert "No tool calls left" in notes[-1] and "1 tool call left." in notes[-2]
    res = env.step(tool([9]))
    assert (res.status, res.done, res.observation) == (EpisodeStatus.TOOL_BUDGET_EXCEEDED, True, None)
    assert env.num_tool_calls == 4 and res.info["frames"] == []
    assert env.outcome().turn_valid == [True] * 4


def test_turn_limit_ends_endless_retries():
    env = make_env(max_turns=3)
    assert env.step("x").status == EpisodeStatus.INVALID_TURN
    assert env.step(tool([99])).status == EpisodeStatus.INVALID_TURN
    res = env.step(tool([1]))
    assert (res.status, res.observation, res.info["frames"]) == (EpisodeStatus.TURN_LIMIT, None, [])
    assert env.outcome() == TraceOutcome({}, [False, False, True], 1)


def test_memory_window_one_keeps_only_last_tool_images():
    env = make_env()
    env.step(tool([1, 2]))
    env.step(tool([3]))
    msgs = env.messages()
    assert images(msgs[3]) == []  # first tool turn: images replaced by placeholders
    placeholders = [p for p in msgs[3]["content"] if p.get("text") == "[image removed from context]\n"]
    assert len(placeholders) == 4
    assert "Video 2, frame 2 (1.00 s):\n" in [p.get("text") for p in msgs[3]["content"]]  # labels stay
    assert images(msgs[5]) == [(1, 3), (2, 3)]
    assert len(all_images(msgs)) == 8 + 2  # initial frames always stay
    # The stored history is untouched: rendering again with a wider window is possible.
    assert len(all_images(env.messages(before_turn=1))) == 8 + 4


def test_rejected_call_does_not_push_images_out_of_the_window():
    env = make_env()
    env.step(tool([1]))
    env.step(tool([99]))
    assert all_images(env.messages())[-2:] == [(1, 1), (2, 1)]


@pytest.mark.parametrize(("window", "expected"), [(0, 8), (1, 8 + 2), (2, 8 + 4 + 2), (None, 8 + 2 + 4 + 2)])
def test_memory_window_sizes(window, expected):
    env = make_env(memory_window=window)
    for frames in ([1], [2, 3], [4]):
        env.step(tool(frames))
    assert len(all_images(env.messages())) == expected


def test_messages_before_turn_are_the_contexts_the_model_saw():
    env = make_env()
    seen = [env.messages()]
    for frames in ([1], [2]):
        env.step(tool(frames))
        seen.append(env.messages())
    env.step(ANSWER)
    for k, context in enumerate(seen):
        replay = env.messages(before_turn=k)
        assert [m["role"] for m in replay] == [m["role"] for m in context]
        assert all_images(replay) == all_images(context)
    with pytest.raises(IndexError):
        env.messages(before_turn=4)


def image_counter(messages) -> int:
    """A stand-in token counter: 10 tokens per image plus one per message."""
    return 10 * len(all_images(messages)) + len(messages)


def test_context_limit_ends_episode():
    # reset: 8 images + 2 messages = 82; one frame per call adds 20 + 2 (assistant, tool)
    env = make_env(max_context_tokens=110, memory_window=None, token_counter=image_counter)
    assert env.step(tool([1])).status == EpisodeStatus.RUNNING  # 104
    res = env.step(tool([2]))  # would be 126
    assert (res.status, res.done, res.observation) == (EpisodeStatus.CONTEXT_EXCEEDED, True, None)
    assert env.messages()[-1]["role"] == "assistant"  # the refused observation is not in the context
    assert image_counter(env.messages()) <= 110


def test_context_limit_with_window_keeps_going():
    env = make_env(max_context_tokens=110, memory_window=1, token_counter=image_counter)
    for frames in ([1], [2], [3]):
        assert env.step(tool(frames)).status == EpisodeStatus.RUNNING


def test_context_config_errors():
    with pytest.raises(ValueError, match="token_counter"):
        make_env(max_context_tokens=100)
    with pytest.raises(ValueError, match="first turn"):
        make_env(max_context_tokens=50, token_counter=image_counter)
    with pytest.raises(ValueError, match="exactly one"):
        EnvConfig(pool_frames=None)
    with pytest.raises(ValueError):
        EnvConfig(max_frames_per_call=0)


def test_step_before_reset_raises():
    env = VideoPairEnv("p", frame_pool_from_arrays(pool(1)), frame_pool_from_arrays(pool(2)), DIMS)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(ANSWER)


def test_unequal_pools_show_what_exists():
    env = make_env(size_1=32, size_2=20)
    res = env.step(tool([5, 25]))
    assert images(res.observation) == [(1, 5), (2, 5), (1, 25)]
    assert "Video 2 has no frame 25 (its pool has 20)." in res.observation["content"][-1]["text"]
    assert make_env(size_1=32, size_2=20).step(tool([32])).status == EpisodeStatus.INVALID_TURN


def test_configurable_frames_per_call():
    assert make_env(max_frames_per_call=2).step(tool([1, 2, 3])).info["problems"] == ["too_many_frames"]


def test_env_never_raises_on_garbage():
    rng = np.random.default_rng(1)
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<synthesis>", "</synthesis>", "{", "}",
              '"name": "select_frames"', '"arguments"', '"target_frames": [', "3", "-1", "]", ",", ":",
              "\\boxed{1}", "VQ:", "Overall:", "\n", "x"]
    for _ in range(100):
        env = make_env()
        while not env.done:
            text = "".join(rng.choice(pieces, size=rng.integers(0, 25)))
            res = env.step(text, truncated=bool(rng.random() < 0.05))
            assert (res.observation is None) == res.done
        assert len(env.turns) <= env.config.max_turns


def test_env_reads_video_files(tmp_path):
    path_1, path_2 = tmp_path / "a.mp4", tmp_path / "b.mp4"
    write_video(path_1, np.full((12, 16, 16, 3), 40, np.uint8), fps=6)
    write_video(path_2, np.full((12, 16, 16, 3), 200, np.uint8), fps=6)
    env = VideoPairEnv("p", path_1, path_2, DIMS, EnvConfig(pool_frames=6, initial_frames=2))
    first = env.reset()[1]
    assert env.pool_sizes == (6, 6)
    pics = [np.asarray(p["image"]) for p in first["content"] if p["type"] == "image"]
    assert [abs(int(p.mean()) - v) <= 3 for p, v in zip(pics, (40, 40, 200, 200))] == [True] * 4
    assert "Video 1, frame 5 (1.83 s):\n" in [p.get("text") for p in first["content"]]


@pytest.fixture(scope="module")
def tiny_processor(tmp_path_factory):
    from transformers import AutoProcessor

    from mmreward.backbones.tiny import build_tiny_vlm

    return AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl"))


def test_conversation_renders_through_tool_chat_template(tiny_processor):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (16, 84, 84, 3), dtype=np.uint8)
    counter = processor_token_counter(tiny_processor)
    env = VideoPairEnv("a dog runs", frame_pool_from_arrays(frames), frame_pool_from_arrays(frames[::-1].copy()),
                       DIMS, EnvConfig(pool_frames=16), token_counter=counter)
    env.reset()
    env.step(tool([1, 2]))
    env.step(tool([5]))
    msgs = env.messages()
    text = tiny_processor.apply_chat_template(msgs, tools=env.tools, add_generation_prompt=True, tokenize=False)
    assert '"name": "select_frames"' in text.split("</tools>")[0]  # the schema is in the system turn
    assert text.count("<|im_start|>assistant\n<think>look closer</think>\n<tool_call>\n{") == 2
    assert text.count("<tool_response>") == 2 and text.count("[image removed from context]") == 4
    assert text.count("<|image_pad|>") == 8 + 2  # initial frames + the last tool turn (memory window 1)
    assert text.endswith("<|im_start|>assistant\n")
    out = tiny_processor.apply_chat_template(
        msgs, tools=env.tools, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["image_grid_thw"].shape[0] == 10
    pad_id = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = tiny_processor.image_processor.merge_size ** 2
    assert int((out["input_ids"] == pad_id).sum()) == int(out["image_grid_thw"].prod(-1).sum()) // merge
    assert counter(msgs) == out["input_ids"].shape[1]
