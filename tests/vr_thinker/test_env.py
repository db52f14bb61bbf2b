"""VideoPairEnv under a preset: pools and numbering, initial frames, tool replies, memory window, statuses."""

import json

import numpy as np
import pytest

from vr_thinker.env import EpisodeStatus, VideoPairEnv, frame_pool_from_arrays
from vr_thinker.presets import load_preset

S = "<synthesis>s</synthesis>\n"
T = "<think>t</think>\n"
R = "<recommend answer>TA=1, VQ=0, MQ=1, OA=1, CF=2</recommend answer>\n"
FINAL = S + T + "<final answer>TA=1, VQ=0, MQ=1, OA=2</final answer>"


def call(frames) -> str:
    return S + T + R + "<tool_call>\n" + json.dumps({"name": "select_frames", "arguments": {"target_frames": frames}}) \
        + "\n</tool_call>"


def clip(length: int, offset: int, size=(8, 8)) -> object:
    """Frame i of the clip is filled with the value offset + i, so images tell which frame they are."""
    frames = np.stack([np.full((*size, 3), offset + i, dtype=np.uint8) for i in range(length)])
    return frame_pool_from_arrays(frames)


def value(image) -> int:
    return int(np.asarray(image)[0, 0, 0])


def make_env(preset=None, size_2=(8, 8), **kw) -> VideoPairEnv:
    preset = preset or load_preset("vr-thinker", ["frames.per_video=8"])
    return VideoPairEnv("a red ball", clip(8, 0), clip(8, 100, size_2), preset, **kw)


def test_pools_are_numbered_across_both_videos():
    env = make_env()
    env.reset()
    assert env.total_frames == 16
    assert [value(env.frame(i)) for i in (0, 7, 8, 15)] == [0, 7, 100, 107]


def test_pools_resample_a_clip_to_the_preset_size():
    env = VideoPairEnv("p", clip(4, 0), clip(16, 100), load_preset("vr-thinker", ["frames.per_video=8"]))
    assert [value(env.frame(i)) for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]  # repeats when shorter
    assert [value(env.frame(8 + i)) for i in range(8)] == [100, 102, 104, 106, 109, 111, 113, 115]


def test_vr_thinker_initial_frames_are_one_video_of_the_stride_rule():
    env = make_env(size_2=(8, 12))
    messages = env.reset()
    assert env.initial_indices() == [0, 2, 4, 6, 8, 10, 12, 14]  # frames[::max(1, 16 // 8)][:8]
    video = messages[1]["content"][0]["video"]
    assert [value(f) for f in video] == [0, 2, 4, 6, 100, 102, 104, 106]
    assert {f.size for f in video} == {(8, 8)}  # Video 2's frames take Video 1's size in the one video input
    full = load_preset("vr-thinker")
    env = VideoPairEnv("p", clip(48, 0), clip(48, 100), full)
    assert env.initial_indices() == [0, 12, 24, 36, 48, 60, 72, 84]  # 48 per video: N = 96, step 12


def test_vrthinker_initial_frames_are_four_images_per_video_at_448():
    preset = load_preset("vrthinker", ["frames.per_video=16"])
    env = VideoPairEnv("p", clip(16, 0, (20, 40)), clip(16, 100, (20, 40)), preset)
    messages = env.reset()
    assert env.initial_indices() == [0, 5, 10, 15, 16, 21, 26, 31]
    images = [p["image"] for p in messages[1]["content"] if p["type"] == "image"]
    assert [value(im) for im in images] == [0, 5, 10, 15, 100, 105, 110, 115]
    assert {im.size for im in images} == {(448, 224)}  # longer side 448, aspect kept


def test_a_tool_call_shows_its_frames_in_a_user_turn_and_the_window_keeps_the_latest():
    env = make_env()
    env.reset()
    first = env.step(call([2, 10]))
    assert first.status is EpisodeStatus.RUNNING and first.info["frames"] == [2, 10]
    assert first.observation["role"] == "user"
    assert first.observation["content"][0] == {"type": "text",
                                               "text": "\nAfter selecting frames: Here are the selected frames"}
    assert [value(p["image"]) for p in first.observation["content"][1:]] == [1, 101]
    env.step(call([3]))
    messages = env.messages()
    # The older tool reply lost its images (removed with their markers); the latest and the first video stay.
    assert [p["type"] for p in messages[3]["content"]] == ["text"]
    assert [p["type"] for p in messages[5]["content"]] == ["text", "image"]
    assert messages[1]["content"][0]["type"] == "video"
    # What the model saw before turn 1: the first tool reply still had its images.
    assert [p["type"] for p in env.messages(before_turn=1)[3]["content"]] == ["text", "image", "image"]
    result = env.step(FINAL)
    assert result.done and result.status is EpisodeStatus.ANSWERED
    assert env.verdicts == {"TA": 1, "VQ": 0, "MQ": 1, "OA": 2}
    outcome = env.outcome()
    assert outcome.num_tool_calls == 2 and outcome.turn_valid == [True] * 3 and outcome.answered
    assert not outcome.ended_after_tool_error and outcome.recommends[0]["CF"] == 2


def test_notices_and_errors_count_as_calls_and_an_answer_after_an_error_is_flagged():
    env = make_env()
    env.reset()
    notice = env.step(call([17]))
    assert notice.observation["content"] == [{"type": "text", "text": (
        "After selecting frames:\nThere are 16 frames numbered in range [1,16]. Your selection is out of range.")}]
    error = env.step(call([]))
    assert error.observation["content"][0]["text"].startswith("After selecting frames:\nExecution error:\n")
    env.step(FINAL)
    outcome = env.outcome()
    assert outcome.num_tool_calls == 2 and outcome.ended_after_tool_error


@pytest.mark.parametrize("text, status", [
    ("no tags at all", EpisodeStatus.INVALID_TURN),
    (S + T + "<final answer>TA=1</final answer>", EpisodeStatus.INVALID_ANSWER),
])
def test_a_malformed_turn_ends_the_episode(text, status):
    env = make_env()
    env.reset()
    result = env.step(text)
    assert result.done and result.status is status and result.observation is None
    assert env.outcome().turn_valid == [False]


def test_truncation_and_the_call_budget_end_the_episode():
    env = make_env()
    env.reset()
    assert env.step(FINAL, truncated=True).status is EpisodeStatus.TRUNCATED
    env = make_env()
    env.reset()
    for _ in range(3):
        assert env.step(call([1])).status is EpisodeStatus.RUNNING
    over = env.step(call([1]))
    assert over.status is EpisodeStatus.TOOL_BUDGET_EXCEEDED and over.observation is None
    assert env.outcome().num_tool_calls == 3  # the call that never ran does not count


def test_the_context_cap_uses_the_rollout_token_counts():
    env = make_env()
    env.reset()
    assert env.step(call([1]), context_tokens=12000, output_tokens=50).status is EpisodeStatus.RUNNING
    assert env.step(call([1]), context_tokens=12050, output_tokens=50).status is EpisodeStatus.CONTEXT_EXCEEDED


def test_the_over_limit_reduction_repeats_with_the_seed():
    preset = load_preset("vr-thinker", ["frames.per_video=8", "frames.reduce_probability=1", "frames.max_per_call=3"])
    shown = []
    for seed in (3, 3, 4):
        env = make_env(preset, seed=seed)
        env.reset()
        shown.append(env.step(call(list(range(1, 13)))).info["frames"])
    assert shown[0] == shown[1] and all(len(s) <= 3 for s in shown)


def test_api_misuse_raises():
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(FINAL)
    env.reset()
    env.step(FINAL)
    with pytest.raises(RuntimeError, match="over"):
        env.step(FINAL)
    with pytest.raises(IndexError):
        env.messages(before_turn=5)
