"""The TRL GRPOTrainer baseline's environment, dataset and reward (completions as TRL's parser returns them)."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor
from trl.chat_template_utils import add_response_schema, parse_response

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.data.records import PreferenceRecord, Side
from vr_thinker.env import EnvConfig, frame_pool_from_arrays
from vr_thinker.rewards import RewardConfig
from vr_thinker.trl_baseline import TRLJudgeEnvironment, judge_dataset, make_reward_function

ENV = EnvConfig(pool_frames=8, initial_frames=2, memory_window=1, max_tool_calls=2, system_prompt="Judge.")
DIMS = {"VQ": ""}


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
    assert env.env_config.memory_window is None and env.env_config.max_tool_calls == 2
    first = env.reset(pair_id="p", judge_prompt="a ball", video_1=pools()[0], video_2=pools()[1])
    assert sum(isinstance(p.get("image"), Image.Image) for p in first) == 4  # 2 initial frames x 2 videos
    shown = env.select_frames([3, 3, 5])
    assert sum(p["type"] == "image" for p in shown) == 4 and "Duplicate" in shown[-1]["text"]
    refused = env.select_frames([99])
    assert not any(p["type"] == "image" for p in refused) and "index_out_of_range" in refused[0]["text"]
    assert env.num_tool_calls == 1


def test_reward_follows_the_protocol(tokenizer):
    reward = make_reward_function(DIMS, RewardConfig())
    label = json.dumps({"VQ": 1, "overall": 2})
    body = json.dumps({"name": "select_frames", "arguments": {"target_frames": [3]}})
    call = f"<think>Look.</think>\n<tool_call>\n{body}\n</tool_call>"
    completions = [
        [parsed(tokenizer, "<think>Fine.</think>\nVQ: \\boxed{1}\nOverall: \\boxed{2}")],  # right, valid
        [parsed(tokenizer, "<think>Fine.</think>\nVQ: \\boxed{2}\nOverall: \\boxed{2}")],  # half right, valid
        [parsed(tokenizer, "VQ: \\boxed{1}\nOverall: \\boxed{2}")],  # right but no think block
        [parsed(tokenizer, call), {"role": "tool", "content": []},
         parsed(tokenizer, "<think>Seen.</think>\nVQ: \\boxed{1}\nOverall: \\boxed{2}")],  # a call, then right
    ]

    class Env:  # what the reward reads from each rollout's environment
        def __init__(self, calls):
            self.num_tool_calls = calls

    rewards = reward(completions=completions, pair_id=["p"] * 4, label=[label] * 4,
                     environments=[Env(0), Env(0), Env(0), Env(1)])
    bonus = 0.5 * (0.3 - 0.25)  # one of four traces called the tool: u = 0.25 < H = 0.3
    assert rewards == pytest.approx([1.5, 0.5 + 0.5, 1.0, 1.5 + bonus])


def test_dataset_rows():
    records = [PreferenceRecord("p1", "a ball", Side(None, [], "a.mp4", None), Side(None, [], "b.mp4", None),
                                {"VQ": "a", "MQ": "b", "overall": "tie"}, {})]
    row = judge_dataset(records, DIMS, ENV)[0]
    assert row["prompt"][0] == {"role": "system", "content": "Judge."}
    assert (row["pair_id"], row["judge_prompt"], row["video_1"]) == ("p1", "a ball", "a.mp4")
    assert json.loads(row["label"]) == {"VQ": 1, "overall": 0}
