"""Stand-in CLIP: labelled pose frames, captions, loss, AUC / EPIC helpers, a short training run (default) and
the held-out AUC of the full training run (slow)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import load_file

from mmreward.backbones.clip import create_clip_dir, load_clip
from mmreward.manifest import read_manifest
from vlm_rm.epic import pearson_distance
from vlm_rm.pose_frames import PoseFrameConfig, render_pose_frames
from vlm_rm.poses import PAPER_BASELINE_PROMPT, PAPER_PROMPTS, POSE_NAMES, check_pose
from vlm_rm.reward import CLIPReward
from vlm_rm.reward_eval import roc_auc, state_reward_epic
from vlm_rm.standin_clip import (
    CAPTIONS,
    STANDIN_CLIP_CONFIG,
    STANDIN_PREPROCESS_CFG,
    caption_targets,
    label_balanced_weights,
    soft_clip_loss,
)

SMALL_FRAMES = PoseFrameConfig(trajectories_per_pose=1, points_per_trajectory=3, fall_episodes=1, fall_steps=12)


@pytest.fixture(scope="module")
def stage(stage_script):
    with stage_script("train/standin_clip.py") as module:
        yield module


@pytest.fixture(scope="module")
def small_set():
    return render_pose_frames(SMALL_FRAMES)


def test_pose_frames_are_labelled_by_the_checks_and_reproducible(small_set):
    n_traj = len(POSE_NAMES) * SMALL_FRAMES.points_per_trajectory
    assert small_set.frames.shape == (n_traj + 2, 224, 224, 3) and small_set.frames.dtype == np.uint8
    assert small_set.success.shape == (n_traj + 2, len(POSE_NAMES))
    ends = small_set.success[SMALL_FRAMES.points_per_trajectory - 1:n_traj:SMALL_FRAMES.points_per_trajectory]
    assert ends[np.arange(len(POSE_NAMES)), np.arange(len(POSE_NAMES))].all()  # every trajectory ends in its pose
    assert small_set.source[0] == "trajectory:standing" and small_set.source[-1] == "fall"
    start, end = small_set.transitions()
    assert (small_set.episode[start] == small_set.episode[end]).all() and (end == start + 1).all()
    assert len(start) == len(small_set) - (len(POSE_NAMES) + 1)  # one fewer than frames per episode
    again = render_pose_frames(SMALL_FRAMES)
    assert np.array_equal(again.frames, small_set.frames) and np.array_equal(again.success, small_set.success)
    other = render_pose_frames(PoseFrameConfig(trajectories_per_pose=1, points_per_trajectory=3, fall_episodes=0,
                                               seed=5))
    assert not np.array_equal(other.frames, small_set.frames[:n_traj])
    with pytest.raises(ValueError, match="unknown poses"):
        render_pose_frames(PoseFrameConfig(poses=("dancing",)))


def test_labels_are_the_checks_of_the_rendered_state():
    from vlm_rm.envs import TexturedHumanoidEnv
    from vlm_rm.pose_frames import placed, perturbed_joints
    from vlm_rm.poses import grounded, reference_qpos

    env = TexturedHumanoidEnv(render_size=64)
    rng = np.random.default_rng(0)
    qpos = placed(grounded(env.model, perturbed_joints(env.model, reference_qpos(env.model, "kneeling"), 3.0, rng)),
                  40.0, np.array([0.2, -0.1]))
    env.set_state(qpos, np.zeros(env.model.nv))
    assert check_pose("kneeling", env.model, env.data)  # turning and moving the body keeps the pose
    assert env.data.qpos[:2].tolist() == pytest.approx([0.2, -0.1], abs=1e-9)
    env.close()


def test_caption_targets():
    success = np.zeros((3, len(POSE_NAMES)), dtype=bool)
    success[0, [POSE_NAMES.index("standing"), POSE_NAMES.index("arms_raised")]] = True
    success[1, POSE_NAMES.index("kneeling")] = True
    targets = caption_targets(success)
    assert CAPTIONS[-1] == PAPER_BASELINE_PROMPT and CAPTIONS[POSE_NAMES.index("kneeling")] == "a humanoid robot kneeling"
    expected = np.zeros((3, len(CAPTIONS)))
    expected[0, [POSE_NAMES.index("standing"), POSE_NAMES.index("arms_raised")]] = 0.25
    expected[1, POSE_NAMES.index("kneeling")] = 0.5
    expected[:2, -1] = 0.5
    expected[2, -1] = 1.0  # a frame in no pose is only "a humanoid robot"
    assert np.allclose(targets, expected)


def test_label_balanced_weights_draw_each_label_set_equally_often():
    success = np.zeros((5, len(POSE_NAMES)), dtype=bool)
    success[:3, 0] = True  # three standing frames, one kneeling frame, one frame in no pose
    success[3, 1] = True
    assert np.allclose(label_balanced_weights(success, 1.0), [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 3])
    assert np.allclose(label_balanced_weights(success, 0.0), 0.2)


def test_soft_clip_loss_is_open_clips_loss_for_one_caption_per_image():
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    text = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    scale = torch.tensor(2.0)
    ours = soft_clip_loss(image, text, scale, torch.eye(6))
    assert ours.item() == pytest.approx(ClipLoss()(image, text, scale.exp()).item(), rel=1e-6)
    # shared captions: image 0 and 1 both carry caption 0; caption 0 -> image splits its target over both
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    logits = scale.exp() * image[:3] @ text[:2].T
    i2t = -torch.log_softmax(logits, 1)[[0, 1, 2], [0, 0, 1]].mean()
    t2i_log = torch.log_softmax(logits.T, 1)
    t2i = -(0.5 * (t2i_log[0, 0] + t2i_log[0, 1]) + t2i_log[1, 2]) / 2
    assert soft_clip_loss(image[:3], text[:2], scale, targets).item() == pytest.approx(((i2t + t2i) / 2).item())


def test_roc_auc_exact_values_with_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert roc_auc([1.0, 1.0, 0.0], [True, False, False]) == 0.75  # a tie counts half
    assert roc_auc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc([1.0, 2.0], [True, True])


def test_state_reward_epic_is_a_shaping_invariant_distance():
    rng = np.random.default_rng(0)
    values = rng.normal(size=20)
    start = rng.integers(0, 20, 40)
    transitions = (start, (start + 1) % 20)
    assert state_reward_epic(values, 3.0 * values + 1.0, transitions) == pytest.approx(0.0, abs=1e-7)
    assert state_reward_epic(values, -values, transitions) == pytest.approx(1.0, abs=1e-7)
    other = rng.normal(size=20)
    # rewards of the next state only: canonicalisation just centres them over the coverage states
    assert state_reward_epic(values, other, transitions) == pytest.approx(
        pearson_distance(values[transitions[1]], other[transitions[1]]), abs=1e-9)


def test_a_short_training_run_saves_an_open_clip_model_loaded_by_path(stage, tmp_path):
    out = tmp_path / "standin"
    manifest = stage.main(["--output_dir", str(out), "--steps", "3", "--batch_size", "8",
                           "--trajectories_per_pose", "1", "--points_per_trajectory", "3", "--fall_episodes", "1",
                           "--heldout_trajectories_per_pose", "1", "--heldout_fall_episodes", "0",
                           "--torch_threads", "1"])
    assert manifest == read_manifest(out, expect_stage="standin_clip")
    assert "NOT zero-shot" in manifest["note"]
    metrics = manifest["metrics"]
    assert metrics["train_frames"] == len(POSE_NAMES) * 3 + 10
    assert set(metrics["auc"]) == set(POSE_NAMES) and set(metrics["auc"]["kneeling"]) == {"0", "0.5", "1"}
    assert all(0.0 <= v <= 1.0 for task in metrics["epic_to_success"].values() for v in task.values())
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [0, 2]

    # the weights moved from their seeded start, except the frozen token embedding
    untrained, _ = create_clip_dir(tmp_path / "init", STANDIN_CLIP_CONFIG, STANDIN_PREPROCESS_CFG, "init", seed=0)
    saved = load_file(str(out / "open_clip_model.safetensors"))
    start = untrained.state_dict()
    assert torch.equal(saved["token_embedding.weight"], start["token_embedding.weight"])
    assert not torch.equal(saved["visual.conv1.weight"], start["visual.conv1.weight"])
    assert not torch.equal(saved["text_projection"], start["text_projection"])

    # loaded by path exactly as real weights are, with the model's own preprocessing
    model, preprocess, _ = load_clip(out)
    assert torch.equal(model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    reward = CLIPReward.load(out, [PAPER_PROMPTS["kneeling"]], [PAPER_BASELINE_PROMPT])
    assert reward.pixel_mean.flatten().tolist() == pytest.approx(STANDIN_PREPROCESS_CFG["mean"])
    assert reward(render_pose_frames(SMALL_FRAMES).frames[:4]).shape == (4,)

    with pytest.raises(ValueError, match="held-out frames would repeat"):
        stage.main(["--output_dir", str(tmp_path / "same"), "--heldout_seed", "0"])


@pytest.mark.slow
def test_the_full_training_run_ranks_held_out_success_frames_first(stage, tmp_path):
    """Default settings (a few CPU minutes): for every paper task the goal-baseline reward puts held-out
    frames that pass the task's check above the others with AUC >= 0.9, at alpha 0, 0.5 and 1."""
    manifest = stage.main(["--output_dir", str(tmp_path / "standin")])
    aucs = manifest["metrics"]["auc"]
    assert {task: min(by_alpha.values()) for task, by_alpha in aucs.items() if min(by_alpha.values()) < 0.9} == {}
    # and the reward tracks success: EPIC distance to the success indicator well below chance (0.707)
    assert max(manifest["metrics"]["epic_to_success"][task]["0"] for task in POSE_NAMES) < 0.6
