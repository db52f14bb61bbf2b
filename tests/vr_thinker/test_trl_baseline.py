"""The TRL GRPOTrainer baseline's environment, dataset and reward (completions as TRL's parser returns them)."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor
from trl.chat_template_utils import add_response_schema, parse_response

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.data.records import PreferenceRecord, Side
from vr_thinker.env import frame_pool_from_arrays
from vr_thinker.presets import load_preset
from vr_thinker.trl_baseline import TRLJudgeEnvironment, judge_dataset, make_reward_function

ENV = load_preset("vr-thinker", ["frames.per_video=8", "limits.max_tool_calls=2", 'prompt.system="Judge."',
                                 "prompt.first_turn_media=images"])
DIMS = ENV.dimensions()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "m", seed=0)
    return add_response_schema(AutoProcessor.from_pretrained(path).tokenizer)


def parsed(tokenizer, text: str) -> dict:
    """An assistant message as GRPOTrainer hands it to reward functions (parsed after the generation prompt)."""
    prefix = tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    return parse_response(tokenizer, tokenizer(text + "<|im_end|>")["input_ids"], prefix=prefix)


def pools():
    rng = np.random.default_rng(0)
    return [frame_pool_from_arrays(rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)) for _ in range(2)]


def test_environment_shows_frames_and_keeps_every_image():
    env = TRLJudgeEnvironment(ENV, DIMS)
    assert env.preset.limits.memory_window is None and env.preset.limits.max_tool_calls == 2
    assert env.preset.overrides[-1] == "limits.memory_window=null"
    first = env.reset(pair_id="p", judge_prompt="a ball", video_1=pools()[0], video_2=pools()[1])
    assert sum(isinstance(p.get("image"), Image.Image) for p in first) == 8  # 4 initial frames x 2 videos
    shown = env.select_frames([3, 3, 11])
    assert sum(p["type"] == "image" for p in shown) == 3 and shown[0]["text"].startswith("\nAfter selecting frames")
    refused = env.select_frames([99])
    assert not any(p["type"] == "image" for p in refused) and "out of range" in refused[0]["text"]
    assert env.num_tool_calls == 2


def test_reward_follows_the_protocol(tokenizer):
    reward = make_reward_function(ENV, DIMS)
    label = json.dumps({"TA": 1, "VQ": 1, "MQ": 0, "OA": 2})
    body = json.dumps({"name": "select_frames", "arguments": {"target_frames": [3]}})
    recommend = "<recommend answer>TA=1, VQ=1, MQ=0, OA=2, CF=2</recommend answer>"
    call = f"<synthesis>s</synthesis><think>Look.</think>{recommend}\n<tool_call>\n{body}\n</tool_call>"
    right = "<synthesis>s</synthesis><think>Fine.</think><final answer>TA=1, VQ=1, MQ=0, OA=2</final answer>"
    completions = [
        [parsed(tokenizer, right)],  # right, valid, no call
        [parsed(tokenizer, right.replace("OA=2", "OA=1"))],  # wrong overall, valid
        [parsed(tokenizer, right.replace("</final answer>", ""))],  # right but the answer block is never closed
        [parsed(tokenizer, call), {"role": "tool", "content": []}, parsed(tokenizer, right)],  # a call, then right
    ]

    class Env:  # what the reward reads from each rollout's environment
        def __init__(self, calls):
            self.num_tool_calls = calls

    rewards = reward(completions=completions, pair_id=["p"] * 4, label=[label] * 4,
                     environments=[Env(0), Env(0), Env(0), Env(1)])
    # Official terms: n = 0 -> accuracy only (the unclosed answer still counts, format aside); n = 1 ->
    # + curiosity (rapr 0 - 0.6) - 1 + format 1.
    assert rewards == pytest.approx([1.0, 0.0, 1.0, 1.0 - 0.6 - 1.0 + 1.0])
    assert reward(completions=completions[2:3], pair_id=["p"], label=[label], environments=[Env(1)]) == pytest.approx(
        [1.0 + (0 - 0.6) - 1.0 + 0.0])  # with a call, the format term shows the broken answer


def test_dataset_rows():
    records = [PreferenceRecord("p1", "a ball", Side(None, [], "a.mp4", None), Side(None, [], "b.mp4", None),
                                {"VQ": "a", "MQ": "b", "overall": "tie"}, {})]
    row = judge_dataset(records, ENV, DIMS)[0]
    assert row["prompt"][0] == {"role": "system", "content": "Judge."}
    assert (row["pair_id"], row["judge_prompt"], row["video_1"]) == ("p1", "a ball", "a.mp4")
    assert json.loads(row["label"]) == {"VQ": 1, "MQ": 2, "OA": 0}
