"""VideoAlign checkpoints: its directory layout read and written, rewards as its inference computes them.

Parity with VideoAlign's own code (a checkpoint trained by its train_reward.py around a tiny random
Qwen2-VL, scored by its inference.py) was checked outside the suite: see docs/videoreward.md.
Here: the layout (PEFT names of transformers 4.45, LoRA unmerged), the conversion, the round trip of
`export_videoalign`, and the refusals.
"""

import json

import numpy as np
import pytest
import torch

from mmreward.data.media import MediaConfig, write_video
from mmreward.model import RewardModel, RewardModelError, ScoringSettings, TuningConfig
from mmreward.videoalign import (
    CONFIG_NAME,
    DIMENSIONS,
    TEMPLATE,
    TOKENS,
    _legacy_name,
    export_videoalign,
    is_videoalign_checkpoint,
    merge_lora,
)

PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from mmreward.backbones.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("q2vl"), family="qwen2_vl")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    return [str(write_video(out / f"c{i}.mp4", rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8), fps=8.0))
            for i, n in enumerate((16, 24, 20))]


def videoalign_like(base, seed=0) -> RewardModel:
    """What VideoAlign's inference computes: reward tokens in its prompt, sequential positions, Qwen-VL frames."""
    settings = ScoringSettings(positions="sequential", overall="sum", normalize=True,
                               media=MediaConfig(num_frames=None, fps=2.0, video_sampling="qwen",
                                                 video_max_pixels=200704))
    model = RewardModel.from_backbone(base, head="reward_token", dimensions=list(DIMENSIONS),
                                      head_options={"tokens": list(TOKENS), "template": TEMPLATE},
                                      settings=settings, dtype="float32")
    torch.manual_seed(seed)
    with torch.no_grad():
        model.head.proj.weight.normal_(0, 0.5)
    model.set_reward_stats({d: {"mean": 0.1 * i, "std": 0.5 + i} for i, d in enumerate(DIMENSIONS)})
    return model.eval()


def test_export_then_load_gives_the_same_rewards(base, clips, tmp_path):
    model = videoalign_like(base)
    out = export_videoalign(model, tmp_path / "va", step=12)
    assert (out / "checkpoint-12" / "model.pth").is_file() and is_videoalign_checkpoint(out)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["inference_config"]["MQ_std"] == 1.5 and config["model_config"]["output_dim"] == 3
    state = torch.load(out / "checkpoint-12" / "model.pth", weights_only=True)
    assert "rm_head.weight" in state and "visual.merger.mlp.0.weight" in state  # transformers 4.45 names
    assert "model.layers.0.self_attn.q_proj.weight" in state
    loaded = RewardModel.from_pretrained(out, dtype="float32")
    assert loaded.settings.positions == "sequential" and loaded.settings.media.video_sampling == "qwen"
    for normalize in (True, False):
        want = model.reward(clips, PROMPT, normalize=normalize)
        got = loaded.reward(clips, PROMPT, normalize=normalize)
        for w, g in zip(want, got):
            assert set(g) == {"VQ", "MQ", "TA", "overall"}
            assert g == pytest.approx(w, abs=1e-5)
            assert g["overall"] == pytest.approx(g["VQ"] + g["MQ"] + g["TA"], abs=1e-9)
    raw, norm = loaded.reward(clips, PROMPT, normalize=False), loaded.reward(clips, PROMPT)  # the default: normalised
    for r, n in zip(raw, norm):
        for i, d in enumerate(DIMENSIONS):
            assert n[d] == pytest.approx((r[d] - 0.1 * i) / (0.5 + i), abs=1e-9)


def test_lora_checkpoint_in_videoalign_layout_loads_merged(base, clips, tmp_path):
    """A state dict as VideoAlign's training saves it: PEFT-wrapped, LoRA unmerged, transformers 4.45 names."""
    from peft import LoraConfig, get_peft_model

    model = videoalign_like(base, seed=1)
    targets = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    peft = get_peft_model(model.backbone, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                     init_lora_weights=False))
    unmerged = RewardModel(peft, model.head, backbone_path=model.backbone_path, tuning=TuningConfig(mode="lora"),
                           processor=model.processor, settings=model.settings, reward_stats=model.reward_stats).eval()
    state = {}
    for name, value in peft.state_dict().items():
        plain = name.removeprefix("base_model.model.")
        state["base_model.model." + _legacy_name(plain)] = value.clone()
    state["base_model.model.rm_head.weight"] = model.head.proj.weight.detach().clone()
    assert any(".lora_B.default." in k for k in state) and "base_model.model.model.layers.1.mlp.up_proj.base_layer.weight" in state
    out = export_videoalign(videoalign_like(base), tmp_path / "va")  # a valid config to edit
    config = json.loads((out / CONFIG_NAME).read_text())
    config["peft_lora_config"].update(lora_enable=True, lora_r=4, lora_alpha=8)
    (out / CONFIG_NAME).write_text(json.dumps(config))
    torch.save(state, out / "checkpoint-0" / "model.pth")
    loaded = RewardModel.from_pretrained(out, dtype="float32")
    got = loaded.reward(clips, PROMPT)
    for w, g in zip(unmerged.reward(clips, PROMPT), got):
        assert g == pytest.approx(w, abs=1e-4)  # merged and unmerged LoRA round differently (~1e-5 here)
    without_lora = videoalign_like(base, seed=1).reward(clips, PROMPT)
    assert max(abs(g["VQ"] - w["VQ"]) for g, w in zip(got, without_lora)) > 1e-3  # the adapters do count


def test_merge_lora_is_w_plus_scaled_b_a():
    torch.manual_seed(0)
    w, a, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(3, 2)
    state = {"base_model.model.x.base_layer.weight": w, "base_model.model.x.base_layer.bias": torch.ones(3),
             "base_model.model.x.lora_A.default.weight": a, "base_model.model.x.lora_B.default.weight": b,
             "base_model.model.y.weight": torch.zeros(1)}
    merged = merge_lora(state, {"lora_r": 2, "lora_alpha": 8})
    assert sorted(merged) == ["x.bias", "x.weight", "y.weight"]
    torch.testing.assert_close(merged["x.weight"], w + 4.0 * b @ a)
    rs = merge_lora(state, {"lora_r": 2, "lora_alpha": 8, "use_rslora": True})
    torch.testing.assert_close(rs["x.weight"], w + 8.0 / 2 ** 0.5 * b @ a)
    with pytest.raises(RewardModelError, match="embeddings"):
        merge_lora({"base_model.model.e.lora_embedding_A.default": a}, {"lora_r": 2, "lora_alpha": 8})


class Planted:
    """Unpickling this would need its class: `weights_only=True` refuses it."""


@pytest.mark.parametrize("content,match", [
    (None, "holds NoneType"),               # VideoAlign's save_full_model without DeepSpeed
    ({"w": Planted()}, "refused to load"),  # anything but plain tensors
])
def test_refuses_what_is_not_a_plain_state_dict(base, tmp_path, content, match):
    out = export_videoalign(videoalign_like(base), tmp_path / "va")
    torch.save(content, out / "checkpoint-0" / "model.pth")
    with pytest.raises(RewardModelError, match=match):
        RewardModel.from_pretrained(out)


def test_refusals_name_the_problem(base, tmp_path):
    out = export_videoalign(videoalign_like(base), tmp_path / "va")
    config = json.loads((out / CONFIG_NAME).read_text())
    other = dict(config, model_config=dict(config["model_config"], reward_token="last"))
    (out / CONFIG_NAME).write_text(json.dumps(other))
    with pytest.raises(RewardModelError, match="reward_token='last'"):
        RewardModel.from_pretrained(out)
    hub = dict(config, model_config=dict(config["model_config"], model_name_or_path="nobody/no-such-model"))
    (out / CONFIG_NAME).write_text(json.dumps(hub))
    with pytest.raises(RewardModelError, match="backbone_path="):
        RewardModel.from_pretrained(out)
    assert RewardModel.from_pretrained(out, backbone_path=base).dimensions == list(DIMENSIONS)
    (out / "checkpoint-0" / "model.pth").unlink()
    with pytest.raises(RewardModelError, match="model.pth: missing"):
        RewardModel.from_pretrained(out, backbone_path=base)


def test_export_refuses_what_videoalign_would_score_differently(base, tmp_path):
    model = videoalign_like(base)
    model.settings.positions = "mrope"
    with pytest.raises(RewardModelError, match="positions='mrope'"):
        export_videoalign(model, tmp_path / "x")
    scalar = RewardModel.from_backbone(base, dimensions=["overall"])
    with pytest.raises(RewardModelError, match="head scalar"):
        export_videoalign(scalar, tmp_path / "y")
