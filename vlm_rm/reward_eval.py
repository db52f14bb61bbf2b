"""How well a frame reward tracks pose success: AUC, EPIC distance to the success indicator.

A task is a pose of `vlm_rm.poses` with its goal prompts; its success indicator is the pose check of
each frame's state. `task_rewards` scores frames with one `CLIPReward` per task (all sharing one CLIP
model, so frames are embedded once) for a sweep of alpha; `evaluate_tasks` measures those rewards on
a labelled `PoseFrameSet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from mmreward.backbones.clip import load_clip
from vlm_rm.epic import epic_distance
from vlm_rm.pose_frames import PoseFrameSet
from vlm_rm.poses import PAPER_BASELINE_PROMPT, PAPER_PROMPTS
from vlm_rm.reward import CLIPReward, projection_reward


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("AUC needs both positive and negative frames")
    # Mann-Whitney U from ranks; tied scores share their average rank.
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    ranks = ((last - counts + 1 + last) / 2)[group]
    n_pos = positive.sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(scores) - n_pos)))


def state_reward_epic(reward: np.ndarray, other: np.ndarray, transitions: tuple[np.ndarray, np.ndarray],
                      gamma: float = 0.99) -> float:
    """EPIC distance between two rewards of the next state, given as values [N] per state.

    States are indices into the value arrays; `transitions` are (from, to) index pairs and the coverage
    distribution is the transitions' own states. For rewards of the next state alone, EPIC's
    canonicalisation only removes each reward's mean over the coverage states.
    """
    reward, other = np.asarray(reward, dtype=np.float64), np.asarray(other, dtype=np.float64)
    start, end = (np.asarray(a)[:, None] for a in transitions)
    actions = np.zeros((len(start), 1))  # the rewards ignore actions

    def lookup(values: np.ndarray):
        return lambda s, a, s2: values[s2[:, 0]]

    return epic_distance(lookup(reward), lookup(other), start, actions, end, gamma=gamma)


def load_task_rewards(
    model_name: str | Path,
    tasks: Sequence[str],
    pretrained: str | Path | None = None,
    goal_prompts: Mapping[str, Sequence[str]] | None = None,
    baseline_prompts: Sequence[str] = (PAPER_BASELINE_PROMPT,),
    device: str = "cpu",
    **reward_kwargs,
) -> dict[str, CLIPReward]:
    """One `CLIPReward` per task on one loaded CLIP; goal prompts default to the paper's prompt of each task."""
    prompts = goal_prompts or {task: [PAPER_PROMPTS[task]] for task in tasks}
    missing = [task for task in tasks if task not in prompts]
    if missing:
        raise ValueError(f"no goal prompts for tasks {missing}")
    model, preprocess, tokenizer = load_clip(model_name, pretrained=pretrained, device=device)
    return {task: CLIPReward(model, preprocess, tokenizer, prompts[task], baseline_prompts, device=device,
                             **reward_kwargs) for task in tasks}


def task_rewards(rewards: Mapping[str, CLIPReward], frames: np.ndarray,
                 alphas: Sequence[float]) -> dict[str, dict[float, np.ndarray]]:
    """Rewards [N] of `frames` per task and alpha; the frames are embedded once (the rewards share a model)."""
    first = next(iter(rewards.values()))
    if any(r.model is not first.model for r in rewards.values()):
        raise ValueError("task rewards must share one CLIP model to embed the frames once")
    embeddings = first.embed_frames(frames)
    with torch.no_grad():
        return {task: {a: projection_reward(embeddings, r.goal, r.baseline, a).cpu().numpy() for a in alphas}
                for task, r in rewards.items()}


def evaluate_tasks(rewards: Mapping[str, Mapping[float, np.ndarray]], frames: PoseFrameSet,
                   gamma: float = 0.99) -> dict[str, dict]:
    """Per task and alpha: AUC of the reward ranking the frames that pass the task's check above the others,
    and the EPIC distance between the reward and the success indicator over the set's episodes (both None
    for a task whose check holds on all frames or on none: there is nothing to rank)."""
    transitions = frames.transitions()
    result = {}
    for task, by_alpha in rewards.items():
        success = frames.holds(task)
        if success.all() or not success.any():
            result[task] = {"auc": {f"{a:g}": None for a in by_alpha}, "epic": {f"{a:g}": None for a in by_alpha},
                            "positives": int(success.sum())}
            continue
        result[task] = {
            "auc": {f"{a:g}": roc_auc(values, success) for a, values in by_alpha.items()},
            "epic": {f"{a:g}": state_reward_epic(values, success.astype(np.float64), transitions, gamma)
                     for a, values in by_alpha.items()},
            "positives": int(success.sum()),
        }
    return result
