"""Pose success checks for the VLM-RM humanoid tasks, computed from body positions (not by eye).

Every check reads `PoseFeatures`, positions taken from a MuJoCo `MjData` after `mj_forward`, expressed
in the world frame (z up, metres) plus the torso's orientation. Lateral / forward coordinates are
measured in the robot's heading frame (torso x axis projected on the floor), so a check does not
depend on which way the robot faces. Reference sizes of gymnasium's humanoid: head ≈ 1.6 m when
standing, hip-to-foot ≈ 0.85 m, hips 0.2 m apart, shoulder-to-hand ≈ 0.6 m.

Thresholds (module constants below, one per idea):
- standing: torso upright (cos tilt ≥ 0.9, i.e. within ~25°), head ≥ 1.35 m, both feet on the floor.
- kneeling: both knees within ~0.1 m of the floor, both feet on it, torso upright (cos tilt ≥ 0.7), pelvis ≥ 0.2 m
  above the knees (thighs up, not sitting on the floor).
- lotus (cross-legged sit): pelvis ≤ 0.35 m, torso upright, knees low and spread ≥ 0.35 m apart,
  each foot closer to the midline than its knee (legs folded inward).
- arms raised: torso upright, both hands above the top of the head.
- splits: feet ≥ 1.2 m apart (legs spread beyond ~90°), both on the floor, pelvis ≤ 0.6 m, torso up
  (cos tilt ≥ 0.5): a robot sprawled on the floor with its legs apart is not doing the splits.
- hands on hips: torso upright, each hand within 0.22 m of its own hip joint.
- standing on one leg: torso upright (≥ 0.8), head ≥ 1.2 m, one foot on the floor, the other ≥ 0.35 m up.
- arms crossed: torso upright, each hand past the body midline on the other side, in front of the
  torso, between pelvis and head height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import mujoco
import numpy as np

from mmreward.errors import UnknownNameError

# Shared thresholds (metres unless noted).
UPRIGHT_STRICT = 0.9  # cos of torso tilt: within ~25° of vertical
UPRIGHT = 0.7  # within ~45°
UPRIGHT_ONE_LEG = 0.8  # within ~37°
FOOT_ON_FLOOR_Z = 0.3  # foot sphere centre (radius 0.075) below this counts as on the floor
KNEE_ON_FLOOR_Z = 0.15  # knee joint centre; resting on the floor it sits at ≈ 0.08
STANDING_HEAD_Z = 1.35
KNEEL_PELVIS_ABOVE_KNEES = 0.2
LOTUS_PELVIS_Z = 0.35
LOTUS_KNEE_Z = 0.35
LOTUS_KNEE_SPREAD = 0.35
HANDS_ABOVE_HEAD = 0.0  # hands higher than the head centre plus this margin
SPLITS_FEET_APART = 1.2
SPLITS_PELVIS_Z = 0.6
UPRIGHT_SPLITS = 0.5  # within 60°: the reference splits lean the torso 45° forward
HAND_ON_HIP_DIST = 0.22
ONE_LEG_HEAD_Z = 1.2
ONE_LEG_LIFT_Z = 0.35
CROSSED_MIN_FORWARD = 0.05  # hands at least this far in front of the torso centre

POSE_NAMES = (
    "standing", "kneeling", "lotus", "arms_raised", "splits", "hands_on_hips", "one_leg", "arms_crossed",
)


@dataclass
class PoseFeatures:
    """Positions [3] in metres (world frame) and torso axes (unit vectors) of one state."""

    head: np.ndarray
    torso: np.ndarray
    pelvis: np.ndarray
    hips: tuple[np.ndarray, np.ndarray]  # (right, left) hip joints
    knees: tuple[np.ndarray, np.ndarray]
    feet: tuple[np.ndarray, np.ndarray]
    hands: tuple[np.ndarray, np.ndarray]
    up: np.ndarray  # torso z axis
    forward: np.ndarray  # heading: torso x axis projected on the floor
    left: np.ndarray  # heading frame's left direction (right-side body parts have negative lateral)

    @property
    def uprightness(self) -> float:
        return float(self.up[2])

    def lateral(self, point: np.ndarray) -> float:
        """Signed distance of `point` left of the torso centre in the heading frame."""
        return float((point - self.torso) @ self.left)

    def ahead(self, point: np.ndarray) -> float:
        return float((point - self.torso) @ self.forward)


def pose_features(model: mujoco.MjModel, data: mujoco.MjData) -> PoseFeatures:
    """Features of the state in `data` (call `mj_forward` / step first so positions are current)."""
    torso_rot = data.body("torso").xmat.reshape(3, 3)
    heading = torso_rot[:, 0].copy()
    heading[2] = 0.0
    if np.linalg.norm(heading) < 1e-6:  # torso pointing straight up/down: fall back to its y axis
        heading = np.cross(torso_rot[:, 1], [0.0, 0.0, 1.0])
    heading /= np.linalg.norm(heading)
    left = np.cross([0.0, 0.0, 1.0], heading)
    return PoseFeatures(
        head=data.geom("head").xpos.copy(),
        torso=data.body("torso").xpos.copy(),
        pelvis=data.body("pelvis").xpos.copy(),
        hips=(data.body("right_thigh").xpos.copy(), data.body("left_thigh").xpos.copy()),
        knees=(data.body("right_shin").xpos.copy(), data.body("left_shin").xpos.copy()),
        feet=(data.geom("right_foot").xpos.copy(), data.geom("left_foot").xpos.copy()),
        hands=(data.geom("right_hand").xpos.copy(), data.geom("left_hand").xpos.copy()),
        up=torso_rot[:, 2].copy(),
        forward=heading,
        left=left,
    )


def _feet_down(f: PoseFeatures) -> bool:
    return all(foot[2] < FOOT_ON_FLOOR_Z for foot in f.feet)


def is_standing(f: PoseFeatures) -> bool:
    return f.uprightness >= UPRIGHT_STRICT and f.head[2] >= STANDING_HEAD_Z and _feet_down(f)


def is_kneeling(f: PoseFeatures) -> bool:
    knees_down = all(knee[2] < KNEE_ON_FLOOR_Z for knee in f.knees)
    thighs_up = f.pelvis[2] - max(k[2] for k in f.knees) >= KNEEL_PELVIS_ABOVE_KNEES
    return knees_down and _feet_down(f) and f.uprightness >= UPRIGHT and thighs_up


def is_lotus(f: PoseFeatures) -> bool:
    knees_low = all(knee[2] < LOTUS_KNEE_Z for knee in f.knees)
    knee_lat = [f.lateral(k) for k in f.knees]
    foot_lat = [f.lateral(p) for p in f.feet]
    spread = knee_lat[1] - knee_lat[0] >= LOTUS_KNEE_SPREAD
    folded = all(abs(fl) < abs(kl) for fl, kl in zip(foot_lat, knee_lat))
    return f.pelvis[2] <= LOTUS_PELVIS_Z and f.uprightness >= UPRIGHT and knees_low and spread and folded


def is_arms_raised(f: PoseFeatures) -> bool:
    return f.uprightness >= UPRIGHT and all(h[2] > f.head[2] + HANDS_ABOVE_HEAD for h in f.hands)


def is_splits(f: PoseFeatures) -> bool:
    apart = float(np.linalg.norm(f.feet[0] - f.feet[1])) >= SPLITS_FEET_APART
    return apart and _feet_down(f) and f.pelvis[2] <= SPLITS_PELVIS_Z and f.uprightness >= UPRIGHT_SPLITS


def is_hands_on_hips(f: PoseFeatures) -> bool:
    near = all(np.linalg.norm(hand - hip) <= HAND_ON_HIP_DIST for hand, hip in zip(f.hands, f.hips))
    return f.uprightness >= UPRIGHT and near


def is_one_leg(f: PoseFeatures) -> bool:
    low, high = sorted(foot[2] for foot in f.feet)
    return (f.uprightness >= UPRIGHT_ONE_LEG and f.head[2] >= ONE_LEG_HEAD_Z
            and low < FOOT_ON_FLOOR_Z and high >= ONE_LEG_LIFT_Z)


def is_arms_crossed(f: PoseFeatures) -> bool:
    right, left = f.hands
    crossed = f.lateral(right) > 0.0 and f.lateral(left) < 0.0
    in_front = all(f.ahead(h) >= CROSSED_MIN_FORWARD for h in f.hands)
    between = all(f.pelvis[2] < h[2] < f.head[2] for h in f.hands)
    return f.uprightness >= UPRIGHT and crossed and in_front and between


POSE_CHECKS: Mapping[str, Callable[[PoseFeatures], bool]] = {
    "standing": is_standing,
    "kneeling": is_kneeling,
    "lotus": is_lotus,
    "arms_raised": is_arms_raised,
    "splits": is_splits,
    "hands_on_hips": is_hands_on_hips,
    "one_leg": is_one_leg,
    "arms_crossed": is_arms_crossed,
}

# Task prompts of the paper mapped to checks (the trainer looks the goal prompt up here).
PROMPT_TO_POSE = {
    "a humanoid robot kneeling": "kneeling",
    "a humanoid robot seated down, meditating in the lotus position": "lotus",
    "a humanoid robot standing up": "standing",
    "a humanoid robot standing up, with both arms raised": "arms_raised",
    "a humanoid robot practicing gymnastics, doing the side splits": "splits",
    "a humanoid robot standing up with hands on hips": "hands_on_hips",
    "a humanoid robot standing up on one leg": "one_leg",
    "a humanoid robot standing up, with its arms crossed": "arms_crossed",
}
PAPER_PROMPTS: dict[str, str] = {pose: prompt for prompt, pose in PROMPT_TO_POSE.items()}  # pose -> its task prompt
PAPER_BASELINE_PROMPT = "a humanoid robot"


def check_pose(name: str, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
    """Whether the state in `data` shows pose `name` (one of POSE_NAMES)."""
    if name not in POSE_CHECKS:
        raise UnknownNameError(f"unknown pose {name!r}; known: {', '.join(POSE_NAMES)}")
    return POSE_CHECKS[name](pose_features(model, data))


def pose_for_prompt(prompt: str) -> str | None:
    """The pose check matching a goal prompt (exact paper prompt or a pose name inside it), or None."""
    text = prompt.strip().lower()
    if text in PROMPT_TO_POSE:
        return PROMPT_TO_POSE[text]
    for name in POSE_NAMES:
        if name.replace("_", " ") in text:
            return name
    return None


# ---- Constructed reference poses (joint angles in degrees) for tests and scripted trajectories ----
# Left-arm shoulder angles mirror the right arm's with opposite sign (mirrored joint axes).
REFERENCE_POSES: dict[str, dict[str, float]] = {
    "standing": {},
    "kneeling": {"right_knee": -90, "left_knee": -90},
    "lotus": {
        "right_hip_y": -90, "left_hip_y": -90, "right_knee": -155, "left_knee": -155,
        "right_hip_z": -50, "left_hip_z": -50, "right_hip_x": -20, "left_hip_x": -20,
    },
    "arms_raised": {
        "right_shoulder1": -85, "right_shoulder2": 20, "right_elbow": -90,
        "left_shoulder1": 85, "left_shoulder2": -20, "left_elbow": -90,
    },
    "splits": {"right_hip_y": -100, "left_hip_y": 20, "left_knee": -2, "right_knee": -2},
    "hands_on_hips": {
        "right_shoulder1": 50, "right_shoulder2": -65, "right_elbow": -30,
        "left_shoulder1": -50, "left_shoulder2": 65, "left_elbow": -30,
    },
    "one_leg": {"left_hip_y": -90, "left_knee": -120},  # lifted foot 0.51 m up (the check needs 0.35)
    "arms_crossed": {
        "right_shoulder1": 60, "right_shoulder2": 40, "right_elbow": -90,
        "left_shoulder1": -60, "left_shoulder2": -40, "left_elbow": -90,
    },
}
# Root pitch (degrees about the world y axis) of each reference pose; splits lean the pelvis down.
REFERENCE_ROOT_PITCH: dict[str, float] = {"splits": 45.0}


def _lowest_point(model: mujoco.MjModel, data: mujoco.MjData) -> float:
    """Lowest z over the robot's spheres and capsules (the floor plane excluded)."""
    lowest = np.inf
    for g in range(model.ngeom):
        if model.geom_bodyid[g] == 0:
            continue
        radius = model.geom_size[g, 0]
        z = data.geom_xpos[g, 2] - radius
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            axis_z = data.geom_xmat[g].reshape(3, 3)[2, 2]
            z -= abs(axis_z) * model.geom_size[g, 1]
        lowest = min(lowest, z)
    return float(lowest)


def grounded(model: mujoco.MjModel, qpos: np.ndarray) -> np.ndarray:
    """qpos with the root height shifted so the lowest body point touches the floor."""
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    out = qpos.copy()
    out[2] -= _lowest_point(model, data)
    return out


def reference_qpos(model: mujoco.MjModel, name: str) -> np.ndarray:
    """qpos of constructed pose `name`, root lowered so the lowest body point touches the floor."""
    if name not in REFERENCE_POSES:
        raise UnknownNameError(f"unknown reference pose {name!r}; known: {', '.join(REFERENCE_POSES)}")
    qpos = model.qpos0.copy()
    for joint, degrees in REFERENCE_POSES[name].items():
        qpos[model.joint(joint).qposadr[0]] = np.deg2rad(degrees)
    pitch = np.deg2rad(REFERENCE_ROOT_PITCH.get(name, 0.0))
    qpos[3:7] = [np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0]
    return grounded(model, qpos)


def interpolate_qpos(model: mujoco.MjModel, start: np.ndarray, end: np.ndarray, fraction: float) -> np.ndarray:
    """Blend of two poses: joints linear, root quaternion blended and renormalised, then re-grounded
    (a linear root height would sink the body into the floor or float it mid-way)."""
    qpos = (1.0 - fraction) * start + fraction * end
    qpos[3:7] /= np.linalg.norm(qpos[3:7])
    return grounded(model, qpos)
