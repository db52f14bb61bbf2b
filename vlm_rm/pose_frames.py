"""Labelled frames of the humanoid in the pose library's poses, with random perturbations.

A `PoseFrameSet` holds rendered frames, the state each shows, and for every frame which pose checks
(`vlm_rm.poses`) hold, decided from the body positions, never by eye. Frames come from two sources:

- perturbed trajectories: for each pose of the library, trajectories from a perturbed standing pose
  into a perturbed copy of the pose that still passes its check (every joint angle offset by a random
  amount, the body turned and moved on the floor by random amounts), rendered at a few points along
  the way; the last point passes the pose's check, the first ones usually do not;
- falls: random-action episodes of the environment (what an RL agent sees before it learns anything).

The stand-in CLIP (`vlm_rm.standin_clip`) trains on one seed's frames and is evaluated on another's,
so held-out frames are new perturbations of the same poses. Consecutive frames of one trajectory or
episode form the transitions that EPIC distances are computed on (`transitions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import mujoco
import numpy as np

from vlm_rm.envs import TexturedHumanoidEnv
from vlm_rm.poses import POSE_CHECKS, POSE_NAMES, grounded, interpolate_qpos, pose_features, reference_qpos

HINGE = mujoco.mjtJoint.mjJNT_HINGE


@dataclass
class PoseFrameConfig:
    """What `render_pose_frames` draws (sizes, perturbation scales, scene)."""

    poses: tuple[str, ...] = POSE_NAMES  # target poses of the trajectories
    trajectories_per_pose: int = 6
    points_per_trajectory: int = 6  # frames along each trajectory; fractions bunch up near the pose
    fall_episodes: int = 4
    fall_steps: int = 60  # steps per random-action episode
    fall_frame_every: int = 6  # keep one frame in this many steps
    joint_noise_deg: float = 8.0  # std of the offset added to every hinge angle (clipped to its range)
    yaw_deg: float = 30.0  # the body turns uniformly within +- this (the camera stays fixed)
    shift_m: float = 0.3  # and moves uniformly within +- this on the floor (x and y)
    render_size: int = 224
    scene: str = "paper"
    seed: int = 0


@dataclass
class PoseFrameSet:
    """Frames [N, S, S, 3] uint8, success of every pose check [N, len(POSE_NAMES)], episode id [N]."""

    frames: np.ndarray
    success: np.ndarray
    episode: np.ndarray
    source: list[str] = field(default_factory=list)  # "trajectory:<pose>" or "fall", per frame

    def __len__(self) -> int:
        return len(self.frames)

    def holds(self, pose: str) -> np.ndarray:
        """bool [N]: the frames whose state passes `pose`'s check."""
        return self.success[:, POSE_NAMES.index(pose)]

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """(from, to) frame indices of consecutive frames within each episode."""
        same = self.episode[1:] == self.episode[:-1]
        start = np.flatnonzero(same)
        return start, start + 1


def _checks(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    features = pose_features(model, data)
    return np.array([POSE_CHECKS[name](features) for name in POSE_NAMES])


def _hinge_addresses(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
    joints = [j for j in range(model.njnt) if model.jnt_type[j] == HINGE]
    return model.jnt_qposadr[joints], model.jnt_range[joints]


def perturbed_joints(model: mujoco.MjModel, qpos: np.ndarray, noise_deg: float, rng: np.random.Generator) -> np.ndarray:
    """`qpos` with every hinge angle offset by N(0, noise_deg) and clipped to its range."""
    out = qpos.copy()
    addresses, ranges = _hinge_addresses(model)
    noisy = out[addresses] + rng.normal(0.0, np.deg2rad(noise_deg), len(addresses))
    out[addresses] = np.clip(noisy, ranges[:, 0], ranges[:, 1])
    return out


TARGET_TRIES = 20


def _perturbed_target(model: mujoco.MjModel, pose: str, noise_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A perturbation of `pose` that still passes its check (the unperturbed pose after TARGET_TRIES misses),
    so every trajectory ends in the pose; points before the end may or may not pass."""
    reference = reference_qpos(model, pose)
    data = mujoco.MjData(model)
    for _ in range(TARGET_TRIES):
        qpos = perturbed_joints(model, reference, noise_deg, rng)
        data.qpos[:] = grounded(model, qpos)
        mujoco.mj_forward(model, data)
        if POSE_CHECKS[pose](pose_features(model, data)):
            return qpos
    return reference


def placed(qpos: np.ndarray, yaw_deg: float, shift_xy: np.ndarray) -> np.ndarray:
    """`qpos` turned by `yaw_deg` about the vertical and moved by `shift_xy` (heights unchanged)."""
    out = qpos.copy()
    half = np.deg2rad(yaw_deg) / 2
    mujoco.mju_mulQuat(out[3:7], np.array([np.cos(half), 0.0, 0.0, np.sin(half)]), qpos[3:7].copy())
    out[:2] += shift_xy
    return out


class _Collector:
    """Frames and labels of the states an env is put in, grouped into episodes."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.success: list[np.ndarray] = []
        self.episode: list[int] = []
        self.source: list[str] = []

    def keep(self, env: TexturedHumanoidEnv, episode: int, source: str) -> None:
        self.frames.append(env.render())  # render runs mj_forward, so the checks below see this state
        self.success.append(_checks(env.model, env.data))
        self.episode.append(episode)
        self.source.append(source)

    def frame_set(self) -> PoseFrameSet:
        return PoseFrameSet(np.stack(self.frames), np.stack(self.success), np.asarray(self.episode), self.source)


def render_pose_frames(cfg: PoseFrameConfig) -> PoseFrameSet:
    """Render the perturbed trajectories and fall episodes of `cfg` (deterministic given its seed)."""
    unknown = [p for p in cfg.poses if p not in POSE_NAMES]
    if unknown:
        raise ValueError(f"unknown poses {unknown}; known: {', '.join(POSE_NAMES)}")
    rng = np.random.default_rng(cfg.seed)
    env = TexturedHumanoidEnv(render_size=cfg.render_size, scene=cfg.scene)
    env.reset(seed=cfg.seed)
    model, zero_vel = env.model, np.zeros(env.model.nv)
    out = _Collector()
    ep = 0
    # Fractions lean towards the end, where the pose is reached, so each pose has success frames.
    fractions = 1.0 - np.linspace(1.0, 0.0, cfg.points_per_trajectory) ** 2
    for pose in cfg.poses:
        for _ in range(cfg.trajectories_per_pose):
            start = perturbed_joints(model, reference_qpos(model, "standing"), cfg.joint_noise_deg, rng)
            end = _perturbed_target(model, pose, cfg.joint_noise_deg, rng)
            yaw, shift = rng.uniform(-cfg.yaw_deg, cfg.yaw_deg), rng.uniform(-cfg.shift_m, cfg.shift_m, 2)
            for fraction in fractions:
                env.set_state(placed(interpolate_qpos(model, start, end, fraction), yaw, shift), zero_vel)
                out.keep(env, ep, f"trajectory:{pose}")
            ep += 1
    for _ in range(cfg.fall_episodes):
        env.reset(seed=int(rng.integers(2**31)))
        for step in range(cfg.fall_steps):
            env.step(rng.uniform(env.action_space.low, env.action_space.high))
            if step % cfg.fall_frame_every == cfg.fall_frame_every - 1:
                out.keep(env, ep, "fall")
        ep += 1
    env.close()
    return out.frame_set()


def scripted_trajectories(env: TexturedHumanoidEnv, poses: Sequence[str], start: str = "standing",
                          num_points: int = 21) -> PoseFrameSet:
    """Unperturbed trajectories from the reference pose `start` into each of `poses` (one episode each):
    joint angles blended linearly at `num_points` evenly spaced fractions, the body kept on the floor."""
    model, zero_vel = env.model, np.zeros(env.model.nv)
    out = _Collector()
    for ep, pose in enumerate(poses):
        q_start, q_end = reference_qpos(model, start), reference_qpos(model, pose)
        for fraction in np.linspace(0.0, 1.0, num_points):
            env.set_state(interpolate_qpos(model, q_start, q_end, fraction), zero_vel)
            out.keep(env, ep, f"scripted:{pose}")
    return out.frame_set()
