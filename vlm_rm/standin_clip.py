"""A stand-in CLIP that knows the humanoid's poses, for running VLM-RM where no CLIP weights can be had.

VLM-RM's reward only means something with a CLIP model that has seen images like the env's frames
(the paper uses ViT-bigG-14). Offline, with no weights to download, this module trains a small open_clip
model contrastively on frames of the textured humanoid in the pose library's poses (`vlm_rm.pose_frames`,
random perturbations) paired with the paper's task prompts, and saves it as an ordinary open_clip model
directory, which `mmreward.backbones.clip.load_clip` / `CLIPReward.load` load by path like real weights.

It is NOT a zero-shot reward model: it was trained on renders of the very poses it is asked about,
labelled by the same pose checks it is evaluated with. It shows that the pipeline turns "a humanoid
robot kneeling" into a reward that prefers kneeling; it says nothing about what a real CLIP does.

Captions: every frame is "a humanoid robot" (the paper's baseline prompt); a frame that passes pose
checks is also each passing task's paper prompt. The loss is CLIP's symmetric cross-entropy between
image and caption embeddings, with soft targets because a caption is shared by many frames of a batch:
image -> caption spreads `1 - BASELINE_SHARE` over the frame's task prompts and `BASELINE_SHARE` on the
baseline (all of it when no check passes); caption -> image spreads evenly over the frames it describes.
The baseline embedding thus becomes the centre of all frames, and the goal-baseline direction points
from "any humanoid" to the task's pose, which is what the paper's projection assumes.

Batches draw every set of pose-check results about equally often (most frames merely stand), and
each frame is mirrored left-right at random (the pose checks are mirror-symmetric, so it keeps its
captions) and rolled sideways by up to 16 pixels (the sky and the tiled floor run on across the seam): without
these the model memorises its few thousand frames (training AUC 1.0, held-out one-leg AUC 0.79). One
leg lifted towards the camera is the hardest pose to see; on the same frames and settings, its held-out
AUC was 0.85 without the shift, 0.90 with it, 0.91 with it and the peak learning rate doubled, and
0.92 after 1,200 steps instead of 800 (the other tasks 0.97-1.0).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.backbones.clip import TINY_CLIP_CONFIG, create_clip_dir, save_clip_weights
from vlm_rm.pose_frames import PoseFrameSet
from vlm_rm.poses import PAPER_BASELINE_PROMPT, PAPER_PROMPTS, POSE_NAMES

CAPTIONS: tuple[str, ...] = tuple(PAPER_PROMPTS[pose] for pose in POSE_NAMES) + (PAPER_BASELINE_PROMPT,)
BASELINE_SHARE = 0.5  # image -> caption target mass on the baseline caption for a frame in some pose

# The tiny CLIP's architecture (a ViT image tower of 7 x 7 patches of the 224 px frame and a causal text
# tower, a few hundred thousand trained parameters). 224 px so the env renders the frames a ViT-bigG-14 run
# would see. A copy, so that editing one dict at run time leaves the other alone.
STANDIN_CLIP_CONFIG: dict[str, Any] = copy.deepcopy(TINY_CLIP_CONFIG)
# OpenAI's mean/std, as the real open_clip checkpoints use.
STANDIN_PREPROCESS_CFG: dict[str, Any] = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
NOTE = ("stand-in CLIP trained by vlm_rm.standin_clip on renders of the humanoid's poses labelled by its pose "
        "checks: NOT zero-shot, its rewards know only these poses")


@dataclass
class StandinTrainConfig:
    """Optimisation settings of `train_standin_clip`."""

    steps: int = 1200
    batch_size: int = 64
    learning_rate: float = 2e-3  # peak of a one-cycle schedule (held-out one-leg AUC 0.912 vs 0.898 at 1e-3)
    warmup_fraction: float = 0.1
    weight_decay: float = 0.05
    mirror: bool = True  # flip half of each batch left-right: every pose check is mirror-symmetric
    max_shift: int = 16  # roll each frame sideways by up to this many pixels (sky and floor run on across the seam)
    balance: float = 1.0  # frames drawn with weight (1 / frames sharing their labels) ** balance; 0: uniformly
    log_every: int = 50
    seed: int = 0


def caption_targets(success: np.ndarray) -> np.ndarray:
    """Image -> caption target distributions [N, len(CAPTIONS)] from pose-check results [N, len(POSE_NAMES)]."""
    success = np.asarray(success, dtype=np.float64)
    counts = success.sum(axis=1, keepdims=True)
    posed = counts > 0
    tasks = np.where(posed, (1.0 - BASELINE_SHARE) * success / np.maximum(counts, 1.0), 0.0)
    baseline = np.where(posed, BASELINE_SHARE, 1.0)
    return np.concatenate([tasks, baseline], axis=1).astype(np.float32)


def label_balanced_weights(success: np.ndarray, balance: float) -> np.ndarray:
    """Sampling probabilities [N]: (1 / number of frames with the same pose-check results) ** balance, so rare
    label sets (one leg up, splits) are drawn about as often as the many standing frames when balance is 1."""
    _, group, counts = np.unique(np.asarray(success, dtype=bool), axis=0, return_inverse=True, return_counts=True)
    weights = (1.0 / counts[group.ravel()]) ** balance
    return weights / weights.sum()


def soft_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP cross-entropy of unit image [B, D] and caption [C, D] embeddings, soft targets [B, C].

    Caption -> image rows use the target columns renormalised over the batch; captions no frame of the
    batch carries are left out of that direction.
    """
    logits = logit_scale.exp() * image @ text.T
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    present = targets.sum(dim=0) > 0
    columns = targets[:, present]
    text_to_image = -((columns / columns.sum(dim=0)).T * F.log_softmax(logits[:, present].T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def _pixels(frames_chw: np.ndarray, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(frames / 255 - mean) / std as frames * scale - offset, in place on one float copy."""
    return torch.from_numpy(frames_chw).float().mul_(scale).sub_(offset)


def train_standin_clip(frames: PoseFrameSet, out_dir: str | Path, cfg: StandinTrainConfig | None = None) -> dict:
    """Train the stand-in on `frames` and save it to `out_dir` (open_clip config + safetensors).

    Returns {"loss": [(step, loss), ...], "train_seconds": ...}. The token embedding stays at its seeded
    random values (the captions use a few dozen of its 49,408 rows; updating all of them every step would
    cost more than the rest of the text tower).
    """
    import open_clip

    cfg = cfg or StandinTrainConfig()
    if frames.frames.shape[1:3] != (STANDIN_CLIP_CONFIG["vision_cfg"]["image_size"],) * 2:
        raise ValueError(f"frames are {frames.frames.shape[1:3]}, the stand-in CLIP takes "
                         f"{STANDIN_CLIP_CONFIG['vision_cfg']['image_size']} px")
    model, out = create_clip_dir(out_dir, STANDIN_CLIP_CONFIG, STANDIN_PREPROCESS_CFG, NOTE, seed=cfg.seed)
    model.train()
    model.token_embedding.requires_grad_(False)
    tokens = open_clip.tokenize(list(CAPTIONS), context_length=STANDIN_CLIP_CONFIG["text_cfg"]["context_length"])
    mean = torch.tensor(STANDIN_PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(STANDIN_PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    scale, offset = 1.0 / (255.0 * std), mean / std
    images = np.ascontiguousarray(frames.frames.transpose(0, 3, 1, 2))  # once, not per batch
    targets = torch.from_numpy(caption_targets(frames.success))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate, total_steps=cfg.steps,
                                                   pct_start=cfg.warmup_fraction)
    rng = np.random.default_rng(cfg.seed)
    batch = min(cfg.batch_size, len(frames))
    draw = label_balanced_weights(frames.success, cfg.balance)
    log, started = [], time.perf_counter()
    for step in range(cfg.steps):
        pick = np.sort(rng.choice(len(frames), batch, replace=False, p=draw))
        chosen = images[pick]
        if cfg.mirror:
            flip = rng.random(batch) < 0.5
            chosen[flip] = chosen[flip][..., ::-1]  # fancy indexing made `chosen` a copy
        for row, shift in enumerate(rng.integers(-cfg.max_shift, cfg.max_shift + 1, batch)):
            chosen[row] = np.roll(chosen[row], shift, axis=-1)
        image = F.normalize(model.encode_image(_pixels(chosen, scale, offset)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        loss = soft_clip_loss(image, text, model.logit_scale, targets[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log.append((step, loss.item()))
    seconds = time.perf_counter() - started
    save_clip_weights(model.eval(), out)
    return {"loss": log, "train_seconds": round(seconds, 2)}
