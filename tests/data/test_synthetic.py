"""Synthetic preference data: determinism, schema, labels that follow the generating factors."""

from __future__ import annotations

import json
import math
import runpy
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmreward.data.media import load_image, read_video
from mmreward.data.records import read_records
from mmreward.data.synthetic import (
    IMAGE_DIMS,
    VIDEO_DIMS,
    SplitSizes,
    SyntheticConfig,
    allocate_kinds,
    generate_synthetic,
    overall_label,
    plan_pair,
    select_varying,
    side_meta,
    split_prompts,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = SyntheticConfig(image_splits=SplitSizes(48, 12, 12), video_splits=SplitSizes(24, 8, 8), num_frames=8)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> dict[str, Path]:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "out", seed=0, config=SMALL)


def _records(paths: dict[str, Path], modality: str) -> list:
    return [r for split in ("train", "val", "test") for r in read_records(paths[f"{modality}/{split}"])]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files(small_set, tmp_path):
    first_root = small_set["manifest"].parent
    again = generate_synthetic(tmp_path / "again", seed=0, config=SMALL)
    first, second = _files(first_root), _files(again["manifest"].parent)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".mp4")]) == 2 * (24 + 8 + 8)
    for name in first:
        assert first[name] == second[name], name
    # Identical pixels too (the MP4 bytes already match; this checks what a reader sees).
    rec = read_records(small_set["videos/val"])[0]
    np.testing.assert_array_equal(read_video(rec.a.video).frames, read_video(tmp_path / "again/videos" / "val" / rec.a.video.name).frames)


def test_other_seed_gives_other_data(small_set, tmp_path):
    config = SyntheticConfig(image_splits=SplitSizes(8, 2, 2), video_splits=SplitSizes(0, 0, 0))
    other = generate_synthetic(tmp_path / "s1", seed=1, config=config)
    assert other["images/train"].read_bytes() != small_set["images/train"].read_bytes()


# ------------------------------------------------------------------------------ schema


@pytest.mark.parametrize("modality, dims", [("images", IMAGE_DIMS), ("videos", VIDEO_DIMS)])
def test_records_read_back_valid(small_set, modality, dims):
    sizes = (SMALL.image_splits if modality == "images" else SMALL.video_splits).as_dict()
    ids = set()
    for split, n in sizes.items():
        records = read_records(small_set[f"{modality}/{split}"])
        assert len(records) == n and not records.skipped
        for rec in records:
            assert set(rec.label) == {*dims, "overall"}
            assert rec.meta["split"] == split and rec.meta["modality"] == modality[:-1]
            for side in (rec.a, rec.b):
                media = side.video if modality == "videos" else side.image
                assert media is not None and media.is_file() and media.parent.name == split
            ids.add(rec.id)
    assert len(ids) == sum(sizes.values())


def test_manifest_records_seed_config_and_prompts(small_set):
    manifest = json.loads(small_set["manifest"].read_text())
    assert manifest["seed"] == 0
    assert manifest["config"]["num_frames"] == 8
    assert manifest["pairs"]["videos/val"] == 8
    assert sum(len(v) for v in manifest["prompts"].values()) == 4 * 3 * 3


# ------------------------------------------------------------------------------ labels vs factors


def _check_labels(label: dict, meta: dict, dims: tuple[str, ...]) -> None:
    a, b = meta["a"], meta["b"]
    for dim in dims:
        varies = dim in meta["varies"]
        if dim == "TA":
            if varies:
                win, lose = (a, b) if label["TA"] == "a" else (b, a)
                attr = meta["ta_attribute"]
                assert win["matches_prompt"] and not lose["matches_prompt"]
                assert win[attr] == meta["target"][attr] != lose[attr]
                assert all(lose[k] == meta["target"][k] for k in ("color", "shape", "count") if k != attr)
            else:
                assert a["matches_prompt"] and b["matches_prompt"]
        elif dim == "VQ":
            if varies:
                win, lose = (a, b) if label["VQ"] == "a" else (b, a)
                assert win["degradation"] == "none" and lose["degradation"] in ("noise", "blur")
                assert (lose["noise_sigma"] > 0) == (lose["degradation"] == "noise")
                assert (lose["blur_radius"] > 0) == (lose["degradation"] == "blur")
            else:
                assert a["degradation"] == b["degradation"] == "none"
        elif dim == "MQ":
            if varies:
                win, lose = (a, b) if label["MQ"] == "a" else (b, a)
                assert win["motion"] == "smooth" and lose["motion"] in ("jitter", "frozen")
                assert (lose["jitter_px"] > 0) == (lose["motion"] == "jitter")
                assert (lose["motion_px"] == 0) == (lose["motion"] == "frozen")
            else:
                assert a["motion"] == b["motion"] == "smooth"
        assert (label[dim] != "tie") == varies
    assert label["overall"] == overall_label(label, ("TA", "MQ", "VQ"))


@pytest.mark.parametrize("modality, dims", [("images", IMAGE_DIMS), ("videos", VIDEO_DIMS)])
def test_written_labels_follow_meta_factors(small_set, modality, dims):
    records = _records(small_set, modality)
    for rec in records:
        _check_labels(rec.label, rec.meta, dims)
        assert rec.prompt.split()[1] == rec.meta["target"]["color"]
    kinds = Counter(tuple(r.meta["varies"]) for r in records)
    assert all(kinds[(d,)] > 0 for d in dims) and kinds[()] > 0


def test_planned_video_labels_follow_factors_and_attribute_weights():
    config = SyntheticConfig(video_ta_attribute_weights={"color": 0.6, "count": 0.3, "shape": 0.1},
                             video_degradations=("noise", "blur"))
    prompts = split_prompts(config, seed=0)["train"]
    rng = np.random.default_rng(123)
    attributes, degradations = Counter(), Counter()
    for i in range(3000):
        kinds = [(), ("TA",), ("VQ",), ("MQ",), ("TA", "VQ"), ("MQ", "TA"), ("MQ", "VQ")]
        varies = kinds[i % len(kinds)]
        plan = plan_pair(rng, True, varies, prompts, config)
        meta = {
            "varies": list(plan.varies),
            "ta_attribute": plan.ta_attribute,
            "target": plan.target.__dict__,
            "a": side_meta(plan.a, plan.target, video=True),
            "b": side_meta(plan.b, plan.target, video=True),
        }
        _check_labels(plan.label, meta, VIDEO_DIMS)
        if plan.ta_attribute:
            attributes[plan.ta_attribute] += 1
        degradations.update(side.degradation for side in (plan.a, plan.b) if side.degradation != "none")
    total = sum(attributes.values())
    assert abs(attributes["color"] / total - 0.6) < 0.05
    assert abs(attributes["count"] / total - 0.3) < 0.05
    assert abs(attributes["shape"] / total - 0.1) < 0.03
    assert abs(degradations["blur"] / sum(degradations.values()) - 0.5) < 0.05


def test_video_text_alignment_pairs_draw_only_their_splits_prompts():
    """A TA loser draws another prompt of the pair's split, both ways round equally often: training pairs never
    show a held-out prompt's drawing (the old mismatch drew them, always as losers, so a model that memorised
    which drawings lose scored below chance on held-out prompts), and no drawing wins more often than it loses."""
    config = SyntheticConfig()
    parts = split_prompts(config, seed=0)
    rng = np.random.default_rng(3)
    for split, prompts in parts.items():
        allowed = set(prompts)
        wins, losses = Counter(), Counter()
        for _ in range(1500):
            plan = plan_pair(rng, True, ("TA",), prompts, config)
            winner, loser = (plan.a, plan.b) if plan.label["TA"] == "a" else (plan.b, plan.a)
            assert winner.objects == plan.target and loser.objects != plan.target
            if split == "train":  # train has pairs of prompts for every attribute; val/test may fall back
                assert {winner.objects, loser.objects} <= allowed
            wins[winner.objects] += 1
            losses[loser.objects] += 1
        if split == "train":
            for drawing in wins.keys() | losses.keys():
                share = wins[drawing] / (wins[drawing] + losses[drawing])
                assert abs(share - 0.5) < 0.15, (drawing, wins[drawing], losses[drawing])
    # Images keep the mismatch of the prompt (their learning check's measured set); the setting turns it on.
    image_prompts = parts["train"]
    drawn = {plan_pair(rng, False, ("TA",), image_prompts, config).b.objects for _ in range(300)}
    drawn |= {plan_pair(rng, False, ("TA",), image_prompts, config).a.objects for _ in range(300)}
    assert not drawn <= set(image_prompts)
    on = SyntheticConfig(image_ta_loser_from_split=True)
    assert all({p.a.objects, p.b.objects} <= set(image_prompts)
               for p in (plan_pair(rng, False, ("TA",), image_prompts, on) for _ in range(300)))


def test_default_images_keep_to_colour_and_noise():
    """The image set differs only in what a tiny model learns within minutes (issue 4's facts)."""
    config = SyntheticConfig()
    prompts = split_prompts(config, seed=0)["train"]
    rng = np.random.default_rng(7)
    attributes, degradations = Counter(), Counter()
    for i in range(600):
        plan = plan_pair(rng, False, [("TA",), ("VQ",), ("VQ", "TA")][i % 3], prompts, config)
        attributes[plan.ta_attribute] += 1
        degradations.update(side.degradation for side in (plan.a, plan.b))
        assert plan.a.motion is None and plan.b.motion is None
    assert attributes == {"color": 400, None: 200}
    assert degradations == {"none": 800, "noise": 400}


def test_degradations_setting_applies_to_both_modalities():
    default = SyntheticConfig()
    assert default.degradation_kinds(video=False) == ("noise",)
    assert default.degradation_kinds(video=True) == ("noise",)
    both = SyntheticConfig(degradations=("blur",))
    assert both.degradation_kinds(video=False) == both.degradation_kinds(video=True) == ("blur",)
    assert SyntheticConfig(image_ta_attribute_weights={"shape": 1.0}).ta_attribute_weights(video=False) == {"shape": 1.0}
    assert default.ta_attribute_weights(video=True) == {"color": 1.0}


def test_overall_label_priority():
    priority = ("TA", "MQ", "VQ")
    assert overall_label({"TA": "tie", "MQ": "tie", "VQ": "b"}, priority) == "b"
    assert overall_label({"TA": "a", "MQ": "b", "VQ": "b"}, priority) == "a"
    assert overall_label({"TA": "tie", "MQ": "b", "VQ": "a"}, priority) == "b"
    assert overall_label({"TA": "tie", "VQ": "tie"}, priority) == "tie"
    assert overall_label({"VQ": "a", "TA": "b"}, ("VQ", "MQ", "TA")) == "a"


# ------------------------------------------------------------------------------ shares, splits


def test_tie_share_is_exact_per_split(small_set):
    for key, path in small_set.items():
        if key == "manifest":
            continue
        records = read_records(path)
        ties = [r for r in records if r.label["overall"] == "tie"]
        assert len(ties) == math.floor(len(records) * SMALL.tie_share + 0.5), key
        assert all(set(r.label.values()) == {"tie"} and r.meta["varies"] == [] for r in ties)


def test_allocate_kinds_counts():
    config = SyntheticConfig(tie_share=0.2, mixed_share=0.1)
    kinds = allocate_kinds(100, VIDEO_DIMS, config, np.random.default_rng(0))
    counts = Counter(kinds)
    assert counts[()] == 20
    assert sum(v for k, v in counts.items() if len(k) == 2) == 10
    assert [counts[(d,)] for d in VIDEO_DIMS] == [24, 23, 23]  # 70 split 1:1:1, remainder to VQ
    assert all(k[0] != k[1] for k in kinds if len(k) == 2)
    image_kinds = Counter(allocate_kinds(10, IMAGE_DIMS, config, np.random.default_rng(0)))
    assert image_kinds == {(): 2, ("VQ", "TA"): 1, ("VQ",): 4, ("TA",): 3}


def test_prompts_disjoint_and_train_covers_attributes(small_set):
    config = SyntheticConfig()
    parts = split_prompts(config, seed=0)
    names = {split: {p.prompt() for p in specs} for split, specs in parts.items()}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert sum(len(v) for v in names.values()) == 36
    train = parts["train"]
    assert {p.color for p in train} == set(config.colors)
    assert {p.shape for p in train} == set(config.shapes) and {p.count for p in train} == set(config.counts)
    # The written records use only their own split's prompts, images and videos alike.
    for modality in ("images", "videos"):
        for split in ("train", "val", "test"):
            assert {r.prompt for r in read_records(small_set[f"{modality}/{split}"])} <= names[split]


def test_select_varying_builds_quality_only_subset(small_set):
    train = read_records(small_set["images/train"])
    quality = select_varying(train, {"VQ"})
    assert quality and all(r.meta["varies"] == ["VQ"] for r in quality)
    assert len(quality) == sum(r.meta["varies"] == ["VQ"] for r in train)
    both = select_varying(train, {"VQ", "TA"})
    assert len(both) == sum(bool(r.meta["varies"]) for r in train)


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="video_size must be even"):
        SyntheticConfig(video_size=85)
    with pytest.raises(ValueError, match="tie_share and mixed_share"):
        SyntheticConfig(tie_share=0.8, mixed_share=0.3)
    with pytest.raises(ValueError, match="unknown shapes"):
        SyntheticConfig(shapes=("circle", "star"))
    with pytest.raises(ValueError, match="image_ta_attribute_weights: keys among color/count/shape"):
        SyntheticConfig(image_ta_attribute_weights={"size": 1.0})
    with pytest.raises(ValueError, match="video_ta_attribute_weights: keys among"):
        SyntheticConfig(video_ta_attribute_weights={"color": 0.0})
    with pytest.raises(ValueError, match="image_degradations must be a non-empty subset"):
        SyntheticConfig(image_degradations=())
    with pytest.raises(ValueError, match="video_degradations must be a non-empty subset"):
        SyntheticConfig(video_degradations=("smear",))
    with pytest.raises(ValueError, match="degradations must be a non-empty subset of noise/blur, got \\('smear',\\)"):
        SyntheticConfig(degradations=("smear",))


# ------------------------------------------------------------------------------ pixels


def _colour_pixels(frame: np.ndarray, rgb) -> int:
    return int((np.abs(frame.astype(int) - np.array(rgb)).sum(axis=-1) < 60).sum())


def _max_gradient(frame: np.ndarray) -> float:
    grey = frame.astype(float).mean(axis=-1)
    return float(max(np.abs(np.diff(grey, axis=0)).max(), np.abs(np.diff(grey, axis=1)).max()))


def _neighbour_diff(frame: np.ndarray) -> float:
    return float(np.abs(np.diff(frame.astype(float), axis=1)).mean())


def _centroids(frames: np.ndarray) -> np.ndarray:
    """Per-frame centre of the objects, weighted by saturation (objects are saturated, backgrounds
    grey); soft weights keep compression ringing at the edges from biasing it."""
    f = frames.astype(float)
    weight = np.clip(f.max(axis=-1) - f.min(axis=-1) - 40.0, 0.0, None)
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    total = weight.sum(axis=(1, 2))
    return np.stack([(weight * xs).sum(axis=(1, 2)) / total, (weight * ys).sum(axis=(1, 2)) / total], axis=1)


def test_image_pixels_agree_with_factors(small_set):
    checked = Counter()
    for rec in _records(small_set, "images"):
        for side in (rec.a, rec.b):
            assert np.asarray(load_image(side.image)).shape == (84, 84, 3)
        if len(rec.meta["varies"]) != 1:
            continue
        dim = rec.meta["varies"][0]
        win, lose = (rec.a, rec.b) if rec.label[dim] == "a" else (rec.b, rec.a)
        img_w, img_l = np.asarray(load_image(win.image)), np.asarray(load_image(lose.image))
        if dim == "TA" and rec.meta["ta_attribute"] == "color":
            prompt_rgb = SMALL.colors[rec.meta["target"]["color"]]
            assert _colour_pixels(img_w, prompt_rgb) > 200 and _colour_pixels(img_l, prompt_rgb) < 10, rec.id
            checked["color"] += 1
        if dim == "VQ":
            kind = rec.meta["b" if rec.label["VQ"] == "a" else "a"]["degradation"]
            if kind == "noise":
                assert _neighbour_diff(img_l) > 5 * _neighbour_diff(img_w), rec.id
            else:
                assert _max_gradient(img_l) < 0.5 * _max_gradient(img_w), rec.id
            checked[kind] += 1
    assert checked["color"] and checked["noise"] and not checked["blur"]


def test_blurred_images_when_configured(tmp_path):
    config = SyntheticConfig(image_splits=SplitSizes(6, 0, 0), video_splits=SplitSizes(0, 0, 0), tie_share=0.0,
                             mixed_share=0.0, dim_weights={"VQ": 1.0, "MQ": 0.0, "TA": 0.0}, image_degradations=("blur",))
    records = read_records(generate_synthetic(tmp_path, seed=0, config=config)["images/train"])
    assert len(records) == 6
    for rec in records:
        win, lose = (rec.a, rec.b) if rec.label["VQ"] == "a" else (rec.b, rec.a)
        assert rec.meta["b" if rec.label["VQ"] == "a" else "a"]["degradation"] == "blur"
        assert _max_gradient(np.asarray(load_image(lose.image))) < 0.5 * _max_gradient(np.asarray(load_image(win.image)))


def test_videos_decode_and_motion_agrees_with_factors(small_set):
    checked = Counter()
    for rec in _records(small_set, "videos"):
        clips = {name: read_video(side.video) for name, side in (("a", rec.a), ("b", rec.b))}
        for clip in clips.values():
            assert clip.frames.shape == (8, 84, 84, 3) and clip.fps == pytest.approx(8.0)
        if rec.meta["varies"] != ["MQ"]:
            continue
        win, lose = rec.label["MQ"], "b" if rec.label["MQ"] == "a" else "a"
        motion = rec.meta[lose]["motion"]
        smooth, faulty = _centroids(clips[win].frames), _centroids(clips[lose].frames)
        travelled = np.hypot(*(smooth[-1] - smooth[0]))
        assert travelled == pytest.approx(rec.meta[win]["motion_px"], abs=2.0), rec.id
        if motion == "frozen":
            assert np.abs(np.diff(faulty, axis=0)).max() < 0.5, rec.id
        else:
            roughness = lambda c: np.abs(np.diff(c, n=2, axis=0)).mean()  # noqa: E731
            assert roughness(faulty) > 3 * roughness(smooth) + 1.0, rec.id
        checked[motion] += 1
    assert checked["frozen"] and checked["jitter"]


# ------------------------------------------------------------------------------ CLI


def test_cli_writes_a_readable_set(tmp_path, capsys):
    cli = runpy.run_path(str(REPO / "data" / "make_synthetic.py"))
    paths = cli["main"](["--out", str(tmp_path), "--seed", "3", "--image-sizes", "6,2,2", "--video-sizes", "2,2,2", "--tie-share", "0.5"])
    assert "done in" in capsys.readouterr().out
    assert len(read_records(paths["images/train"])) == 6
    assert sum(r.label["overall"] == "tie" for r in read_records(paths["images/train"])) == 3
    assert len(read_records(paths["videos/test"])) == 2
    assert json.loads(paths["manifest"].read_text())["seed"] == 3


def test_tiny_vision_tower_sees_motion_quality(tmp_path):
    """The motion-quality signal reaches the tiny model's visual tokens at the recipes' frame count (8 of 16), size
    (84 px) and temporal patch (2 frames), even with its random, untrained tower: from one temporal patch to the next
    a frozen clip's tokens change by the codec's flicker only (<1% of its smooth partner's) and a jittery clip's
    change more than its smooth partner's. (Whether a head then learns it is the training tests' business.)"""
    import torch

    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.collate import CollateConfig, PairCollator
    from mmreward.data.dataset import PreferenceDataset
    from mmreward.data.media import MediaConfig
    from mmreward.model import RewardModel

    paths = generate_synthetic(tmp_path / "set", seed=1, config=SyntheticConfig(
        image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(0, 72, 0), tie_share=0.0, mixed_share=0.0))
    model = RewardModel.from_backbone(build_tiny_vlm(tmp_path / "tiny"), dimensions=["MQ"]).eval()
    data = PreferenceDataset(paths["videos/val"], MediaConfig(num_frames=8))
    collate = PairCollator(model.processor, ["MQ"], CollateConfig())
    tower = model.backbone.model.visual
    seen = Counter()
    with torch.no_grad():
        for index, record in enumerate(data.records):
            if record.meta["varies"] != ["MQ"]:
                continue
            inputs = collate([data[index]])["inputs"]
            grid = inputs["video_grid_thw"]
            tokens = tower(inputs["pixel_values_videos"], grid_thw=grid).pooler_output
            steps = int(grid[0, 0])
            change = {side: float((clip.reshape(steps, -1, clip.shape[-1]).diff(dim=0)).norm(dim=-1).mean())
                      for side, clip in zip("ab", tokens.chunk(2))}
            winner = record.label["MQ"]
            loser = "b" if winner == "a" else "a"
            fault = record.meta[loser]["motion"]
            if fault == "frozen":
                assert change[loser] < 0.01 * change[winner], (record.id, change)  # the codec's flicker only
            else:
                assert change[loser] > change[winner], (record.id, change)
            seen[fault] += 1
    assert seen["frozen"] >= 5 and seen["jitter"] >= 5, seen
