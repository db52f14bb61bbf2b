"""eval/humanoid_reward_curve.py: scripted trajectories into the tasks' poses scored for an alpha sweep, and the
reward measured against pose success (AUC, EPIC)."""

import json

import numpy as np
import pytest

from mmreward.manifest import read_manifest
from vlm_rm.envs import TexturedHumanoidEnv
from vlm_rm.pose_frames import scripted_trajectories
from vlm_rm.reward import CLIPReward
from vlm_rm.reward_eval import roc_auc, state_reward_epic



@pytest.fixture(scope="module")
def curve_script(stage_script):
    with stage_script("eval/humanoid_reward_curve.py") as module:
        yield module


def test_curves_and_measures_match_direct_scoring_of_the_same_frames(curve_script, tmp_path):
    out = tmp_path / "curve"
    manifest = curve_script.main(["--output_dir", str(out), "--num_points", "5", "--alphas", "0", "1",
                                  "--tasks", "kneeling", "arms_raised"])
    assert manifest == read_manifest(out, expect_stage="humanoid_reward_curve")
    assert "RANDOM" in manifest["note"] and manifest["inputs"]["measured_on"] == "scripted trajectories"
    result = json.loads((out / "reward_curve.json").read_text())
    kneeling = result["tasks"]["kneeling"]
    assert kneeling["goal_prompts"] == ["a humanoid robot kneeling"]
    assert result["tasks"]["arms_raised"]["goal_prompts"] == ["a humanoid robot standing up, with both arms raised"]
    assert kneeling["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0] and result["frames_measured"] == 10
    assert kneeling["pose_reached"][0] is False and kneeling["pose_reached"][-1] is True
    assert set(kneeling["rewards"]) == {"0", "1"}
    assert (out / "reward_curves.png").stat().st_size > 0 and (out / "frames.png").is_file()

    env = TexturedHumanoidEnv(render_size=224)
    env.reset(seed=0)
    scripted = scripted_trajectories(env, ["kneeling", "arms_raised"], num_points=5)
    env.close()
    success = scripted.holds("kneeling")
    for alpha in (0.0, 1.0):
        direct = CLIPReward.load(out / "tiny_clip", ["a humanoid robot kneeling"], ["a humanoid robot"], alpha)
        values = direct(scripted.frames).numpy()
        assert np.allclose(kneeling["rewards"][f"{alpha:g}"], values[:5], atol=1e-5)
        # AUC and EPIC over both scripted trajectories (no held-out set asked for)
        assert kneeling["auc"][f"{alpha:g}"] == pytest.approx(roc_auc(values, success), abs=1e-6)
        assert kneeling["epic"][f"{alpha:g}"] == pytest.approx(
            state_reward_epic(values, success.astype(float), scripted.transitions()), abs=1e-5)
    metrics = manifest["metrics"]
    assert metrics["kneeling/rise_alpha_0"] == pytest.approx(kneeling["rewards"]["0"][-1] - kneeling["rewards"]["0"][0])
    assert metrics["arms_raised/epic_alpha_1"] == result["tasks"]["arms_raised"]["epic"]["1"]


def test_a_task_without_negatives_gets_no_measure_and_bad_settings_are_refused(curve_script, tmp_path):
    manifest = curve_script.main(["--output_dir", str(tmp_path / "standing"), "--num_points", "3",
                                  "--alphas", "0", "--tasks", "standing"])
    assert manifest["metrics"]["standing/auc_alpha_0"] is None  # standing -> standing: every frame succeeds
    with pytest.raises(ValueError, match="unknown pose 'dancing'"):
        curve_script.main(["--output_dir", str(tmp_path / "x"), "--tasks", "dancing"])
    with pytest.raises(ValueError, match="single task"):
        curve_script.main(["--output_dir", str(tmp_path / "y"), "--tasks", "kneeling", "lotus",
                           "--goal_prompts", "a robot"])
