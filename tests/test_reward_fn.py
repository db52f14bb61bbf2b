"""RewardModel as a TRL reward function."""

import pytest
import torch
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, encode_sides
from mmreward.data.dataset import SideMedia
from mmreward.model import RewardModel, TuningConfig
from mmreward.reward_fn import RewardFunction, RewardFunctionError, completion_text, prompt_text


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    tiny = build_tiny_vlm(tmp_path_factory.mktemp("tiny"))
    return RewardModel.from_backbone(tiny, dimensions=["TA", "overall"], tuning=TuningConfig(mode="head")).eval()


def test_text_extraction():
    prompt = [{"role": "system", "content": "be fair"},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe "},
                                           {"type": "text", "text": "it."}]}]
    assert prompt_text(prompt) == "Describe it."
    assert prompt_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "A cat."}]) == "A cat."
    assert completion_text("raw") == "raw"
    with pytest.raises(RewardFunctionError, match="without a user message"):
        prompt_text([{"role": "system", "content": "x"}])


def test_scores_match_model_and_trl_signature(model, tmp_path):
    red = Image.new("RGB", (84, 84), (220, 0, 0))
    path = tmp_path / "blue.png"
    Image.new("RGB", (84, 84), (0, 0, 220)).save(path)
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
        "What colour?",
    ]
    completions = [[{"role": "assistant", "content": "Red."}], [{"role": "assistant", "content": "Blue."}], "Green."]
    fn = RewardFunction(model, batch_size=2)
    assert fn.__name__ == "reward_model_overall" and not isinstance(fn, torch.nn.Module)
    rewards = fn(prompts=prompts, completions=completions, completion_ids=None,
                 images=[[red], [path], None], trainer_state=None)
    assert len(rewards) == 3 and all(isinstance(r, float) for r in rewards)
    sides = [SideMedia([red], response="Red."), SideMedia([Image.open(path).convert("RGB")], response="Blue."),
             SideMedia([], response="Green.")]
    expected = model.score(encode_sides(model.processor, ["What colour?"] * 3, sides, CollateConfig()))[:, 1]
    assert rewards == pytest.approx(expected.tolist(), abs=1e-5)
    ta = RewardFunction(model, dimension="TA")(prompts=prompts, completions=completions, images=[[red], [path], None])
    assert ta != pytest.approx(rewards)


def test_errors(model):
    with pytest.raises(RewardFunctionError, match="not among"):
        RewardFunction(model, dimension="VQ")
    fn = RewardFunction(model)
    with pytest.raises(RewardFunctionError, match="2 prompts for 1"):
        fn(prompts=["a", "b"], completions=["x"])
    with pytest.raises(RewardFunctionError, match="column 'images' has 1 entries for 2"):
        fn(prompts=["a", "b"], completions=["x", "y"], images=[None])
