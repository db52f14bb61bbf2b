"""Pose checks on constructed poses (qpos set, mj_forward) and prompt lookup."""

import mujoco
import numpy as np
import pytest

from vlm_rm.envs import TexturedHumanoidEnv
from vlm_rm.poses import (
    POSE_CHECKS,
    grounded,
    POSE_NAMES,
    check_pose,
    interpolate_qpos,
    pose_features,
    pose_for_prompt,
    reference_qpos,
)

# Which checks each constructed pose satisfies (standing-with-arms poses are also "standing").
EXPECTED = {
    "standing": {"standing"},
    "kneeling": {"kneeling"},
    "lotus": {"lotus"},
    "arms_raised": {"standing", "arms_raised"},
    "splits": {"splits"},
    "hands_on_hips": {"standing", "hands_on_hips"},
    "one_leg": {"one_leg"},
    "arms_crossed": {"standing", "arms_crossed"},
}


@pytest.fixture(scope="module")
def model():
    env = TexturedHumanoidEnv(render_size=32)
    yield env.model
    env.close()


def _state(model, qpos):
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    return data


def _yaw(qpos, degrees):
    turned = qpos.copy()
    half = np.deg2rad(degrees) / 2
    yaw = np.array([np.cos(half), 0.0, 0.0, np.sin(half)])
    mujoco.mju_mulQuat(turned[3:7], yaw, qpos[3:7])
    return turned


@pytest.mark.parametrize("pose", POSE_NAMES)
def test_each_constructed_pose_passes_exactly_its_checks(model, pose):
    data = _state(model, reference_qpos(model, pose))
    passed = {name for name in POSE_NAMES if check_pose(name, model, data)}
    assert passed == EXPECTED[pose]
    # facing another direction changes nothing
    turned = _state(model, _yaw(reference_qpos(model, pose), 120.0))
    assert {name for name in POSE_NAMES if check_pose(name, model, turned)} == EXPECTED[pose]


def test_reference_poses_rest_on_the_floor(model):
    for pose in POSE_NAMES:
        data = _state(model, reference_qpos(model, pose))
        lowest = min(data.geom(g).xpos[2] - model.geom(g).size[0] for g in ("right_foot", "left_foot", "butt"))
        assert lowest >= -1e-6


def test_lying_down_is_nothing(model):
    lying = reference_qpos(model, "standing")
    lying[3:7] = [np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0]  # pitched 90 degrees, face down
    lying[2] = 0.2
    features = pose_features(model, _state(model, lying))
    assert not any(check(features) for check in POSE_CHECKS.values())


@pytest.mark.parametrize("roll", [70.0, 80.0])
def test_a_robot_sprawled_on_its_side_with_legs_apart_is_not_doing_the_splits(model, roll):
    sprawled = reference_qpos(model, "splits")
    half = np.deg2rad(roll) / 2
    sprawled[3:7] = [np.cos(half), np.sin(half), 0.0, 0.0]  # rolled onto its side
    features = pose_features(model, _state(model, grounded(model, sprawled)))
    # what made the old check say "splits": feet far apart and down, pelvis low; but the torso lies flat
    assert np.linalg.norm(features.feet[0] - features.feet[1]) > 1.2 and features.pelvis[2] < 0.6
    assert all(foot[2] < 0.3 for foot in features.feet) and features.uprightness < 0.35
    assert not check_pose("splits", model, _state(model, grounded(model, sprawled)))


def test_the_way_down_to_kneeling_passes_standing_then_neither_then_kneeling(model):
    start, end = reference_qpos(model, "standing"), reference_qpos(model, "kneeling")
    seen = []
    for fraction in np.linspace(0.0, 1.0, 11):
        qpos = interpolate_qpos(model, start, end, fraction)
        assert np.linalg.norm(qpos[3:7]) == pytest.approx(1.0)
        data = _state(model, qpos)
        seen.append((check_pose("standing", model, data), check_pose("kneeling", model, data)))
    assert seen[0] == (True, False) and seen[-1] == (False, True)
    assert (False, False) in seen and (True, True) not in seen
    first_kneel = seen.index((False, True))
    assert all(s == (False, True) for s in seen[first_kneel:])
    assert np.allclose(interpolate_qpos(model, start, end, 1.0), end)


def test_prompt_lookup_and_unknown_names(model):
    assert pose_for_prompt("a humanoid robot kneeling") == "kneeling"
    assert pose_for_prompt("A humanoid robot seated down, meditating in the lotus position") == "lotus"
    assert pose_for_prompt("robot with arms crossed") == "arms_crossed"
    assert pose_for_prompt("a humanoid robot dancing") is None
    with pytest.raises(KeyError, match="unknown pose 'dancing'"):
        check_pose("dancing", model, mujoco.MjData(model))
    with pytest.raises(KeyError, match="unknown reference pose"):
        reference_qpos(model, "dancing")
