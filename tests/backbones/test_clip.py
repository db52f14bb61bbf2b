"""open_clip loading (local dir, local weights file, built-in name) and the tiny offline CLIP."""

import json

import open_clip
import pytest
import torch

from mmreward.backbones.clip import (
    CONFIG_NAME,
    TINY_CLIP_CONFIG,
    TINY_PREPROCESS_CFG,
    TINY_WEIGHTS_NAME,
    CLIPLoadError,
    build_tiny_clip,
    clip_image_size,
    load_clip,
    local_clip_note,
)

PROMPTS = ["a humanoid robot kneeling", "a humanoid robot"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


def _embed(model, tokenizer, image):
    with torch.no_grad():
        return model.encode_text(tokenizer(PROMPTS)), model.encode_image(image)


def test_tiny_clip_round_trip_by_dir_schema_and_weights_file(tiny_dir):
    assert (tiny_dir / CONFIG_NAME).is_file() and (tiny_dir / TINY_WEIGHTS_NAME).is_file()
    assert "RANDOM weights" in json.loads((tiny_dir / CONFIG_NAME).read_text())["note"]
    image = torch.rand(1, 3, 224, 224)
    by_path = _embed(*load_clip(tiny_dir)[::2], image)
    by_schema = _embed(*load_clip(f"local-dir:{tiny_dir}")[::2], image)
    by_file = _embed(*load_clip(tiny_dir, pretrained=tiny_dir / TINY_WEIGHTS_NAME)[::2], image)
    for other in (by_schema, by_file):
        assert torch.equal(by_path[0], other[0]) and torch.equal(by_path[1], other[1])
    assert by_path[0].shape == (2, 32) and by_path[1].shape == (1, 32)


def test_build_is_seeded(tmp_path, tiny_dir):
    same = load_clip(build_tiny_clip(tmp_path / "same", seed=0))[0].state_dict()
    other = load_clip(build_tiny_clip(tmp_path / "other", seed=1))[0].state_dict()
    ref = load_clip(tiny_dir)[0].state_dict()
    key = "visual.conv1.weight"
    assert torch.equal(same[key], ref[key]) and not torch.equal(other[key], ref[key])


def test_preprocess_uses_the_models_own_mean_std_and_size(tiny_dir):
    model, preprocess, tokenizer = load_clip(tiny_dir)
    norm = preprocess.transforms[-1]
    assert list(norm.mean) == TINY_PREPROCESS_CFG["mean"] and list(norm.std) == TINY_PREPROCESS_CFG["std"]
    assert clip_image_size(model) == (224, 224)
    assert not model.training
    tokens = tokenizer(PROMPTS)
    assert tokens.shape == (2, 32) and tokens[0, 0].item() == 49406  # SimpleTokenizer start token


def test_registered_name_with_a_local_weights_file(tmp_path, tiny_dir):
    # The full-scale path: a built-in architecture name plus a weights file on disk, no download.
    (tmp_path / "mmreward-tiny-test.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / "mmreward-tiny-test.json")
    image = torch.rand(1, 3, 224, 224)
    model, preprocess, tokenizer = load_clip("mmreward-tiny-test", pretrained=tiny_dir / TINY_WEIGHTS_NAME)
    reference = load_clip(tiny_dir)
    assert torch.equal(_embed(model, tokenizer, image)[1], _embed(reference[0], reference[2], image)[1])
    # a built-in name without a tag uses open_clip's default (OpenAI) normalisation
    assert preprocess.transforms[-1].mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_bad_inputs_name_the_problem(tmp_path, tiny_dir):
    with pytest.raises(CLIPLoadError, match="missing.bin: CLIP weights file not found"):
        load_clip("ViT-B-32", pretrained=tmp_path / "missing.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIPLoadError, match=f"empty: not an open_clip model directory .*{CONFIG_NAME}"):
        load_clip(tmp_path / "empty")
    with pytest.raises(CLIPLoadError, match="unknown open_clip model name"):
        load_clip("ViT-Nonexistent-99")
    with pytest.raises(CLIPLoadError, match="not from the pretrained tag 'laion2b'"):
        load_clip(tiny_dir, pretrained="laion2b")


def test_local_clip_note_reads_what_built_the_directory(tmp_path, tiny_dir):
    assert "RANDOM weights" in local_clip_note(tiny_dir)
    assert "RANDOM weights" in local_clip_note(f"local-dir:{tiny_dir}")
    assert local_clip_note("ViT-B-32") is None and local_clip_note(tmp_path / "missing") is None
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / CONFIG_NAME).write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    assert local_clip_note(bare) is None
