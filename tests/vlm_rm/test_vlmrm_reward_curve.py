"""eval/humanoid_reward_curve.py: scripted standing -> kneeling trajectory scored for an alpha sweep."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmreward.manifest import read_manifest
from vlm_rm.envs import TexturedHumanoidEnv
from vlm_rm.reward import CLIPReward

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def curve_script():
    spec = importlib.util.spec_from_file_location("eval_humanoid_reward_curve", ROOT / "eval" / "humanoid_reward_curve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_curve_matches_direct_scoring_of_the_same_frames(curve_script, tmp_path):
    out = tmp_path / "curve"
    manifest = curve_script.main(["--output_dir", str(out), "--num_points", "5", "--alphas", "0", "1"])
    assert manifest == read_manifest(out, expect_stage="humanoid_reward_curve")
    assert "RANDOM" in manifest["note"]
    result = json.loads((out / "reward_curve.json").read_text())
    assert result["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result["end_pose_reached"][0] is False and result["end_pose_reached"][-1] is True
    assert set(result["rewards"]) == {"0", "1"}
    assert (out / "reward_curve.png").stat().st_size > 0 and (out / "frames.png").is_file()

    env = TexturedHumanoidEnv(render_size=224)
    env.reset(seed=0)
    frames, _ = curve_script.trajectory_frames(env, "standing", "kneeling", 5)
    env.close()
    for alpha in (0.0, 1.0):
        direct = CLIPReward.load(out / "tiny_clip", ["a humanoid robot kneeling"], ["a humanoid robot"], alpha)(frames)
        assert np.allclose(result["rewards"][f"{alpha:g}"], direct.numpy(), atol=1e-5)
    assert manifest["metrics"]["rise_alpha_0"] == pytest.approx(result["rewards"]["0"][-1] - result["rewards"]["0"][0])


def test_unknown_pose_is_refused(curve_script, tmp_path):
    with pytest.raises(ValueError, match="unknown pose 'dancing'"):
        curve_script.main(["--output_dir", str(tmp_path / "x"), "--end_pose", "dancing"])
