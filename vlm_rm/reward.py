"""Zero-shot CLIP rewards (VLM-RM): goal-baseline projection of unit CLIP embeddings.

    r(x) = 1 - 1/2 * ||(x - g) P||^2,   P = alpha * d d^T / ||d||^2 + (1 - alpha) * I,   d = g - b

x is a unit image embedding, g / b the goal / baseline prompt embeddings. alpha = 0 is
1 - 1/2 ||x - g||^2 (= cosine similarity when g is a unit vector); alpha = 1 keeps only the component
of x - g along the goal-baseline direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from mmreward.backbones.clip import clip_image_size, load_clip


# How far an image embedding's norm may stray from 1 (float32 normalisation is exact to ~1e-7;
# half-precision embeddings normalised in float32 stay well inside this).
UNIT_NORM_TOL = 1e-3


def projection_reward(x: torch.Tensor, goal: torch.Tensor, baseline: torch.Tensor, alpha: float) -> torch.Tensor:
    """`1 - 0.5 * ||(x - goal) P||^2` for each row of x [N, D]; goal, baseline [D] used as given.

    The rows of x must be unit image embeddings (the formula assumes it; an unnormalised row gives a
    reward off by up to half its squared norm), so other rows are refused rather than scored.
    P is never materialised: P is symmetric, so (x - g) P = alpha * ((x - g)·d / ||d||^2) d + (1 - alpha)(x - g).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if x.ndim != 2 or goal.shape != x.shape[1:] or baseline.shape != goal.shape:
        raise ValueError(f"expected x [N, D] and goal, baseline [D]; got {tuple(x.shape)}, "
                         f"{tuple(goal.shape)}, {tuple(baseline.shape)}")
    norms = x.detach().norm(dim=-1)
    off = (norms - 1.0).abs() > UNIT_NORM_TOL
    if off.any():
        first = int(off.nonzero()[0, 0])
        raise ValueError(f"image embeddings must be unit vectors (L2-normalise them first); {int(off.sum())} of "
                         f"{len(x)} rows are not, e.g. row {first} has norm {norms[first].item():.4g}")
    diff = x - goal
    projected = (1.0 - alpha) * diff
    if alpha > 0.0:
        direction = goal - baseline
        norm_sq = direction.dot(direction)
        if norm_sq == 0:
            raise ValueError("goal and baseline embeddings coincide; the projection direction is undefined")
        projected = projected + alpha * (diff @ direction / norm_sq)[:, None] * direction
    return 1.0 - 0.5 * projected.pow(2).sum(dim=-1)


def _normalize_transform(preprocess: Callable) -> T.Normalize:
    """The Normalize step of an open_clip inference transform (its own mean/std)."""
    for step in getattr(preprocess, "transforms", []):
        if isinstance(step, T.Normalize):
            return step
    raise ValueError(f"preprocess has no torchvision Normalize step: {preprocess}")


def _rgb_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.dtype != np.uint8 or frame.shape[-1] != 3:
        raise ValueError(f"a frame must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
    return frame


class CLIPReward(torch.nn.Module):
    """Scores rendered frames against goal/baseline prompts with an open_clip model.

    Prompt embeddings are L2-normalised, then averaged per prompt set. `renormalize_means=False`
    (default, as in the original VLM-RM code) keeps the means as they are (their norm is < 1 when
    prompts differ); True rescales each mean to unit norm, so alpha = 0 becomes exactly cosine similarity.

    Frames go through the model's own open_clip transform. Frames that already have the model's input
    size skip PIL: they are scaled to [0, 1] and normalised with the transform's own mean/std in one
    tensor op (numerically the same as the transform; tested).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        goal_prompts: Sequence[str],
        baseline_prompts: Sequence[str],
        alpha: float = 0.0,
        *,
        renormalize_means: bool = False,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if not goal_prompts or not baseline_prompts:
            raise ValueError("CLIPReward needs at least one goal prompt and one baseline prompt")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.alpha = float(alpha)
        self.renormalize_means = renormalize_means
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.image_size = clip_image_size(model)
        norm = _normalize_transform(preprocess)
        self.register_buffer("pixel_mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.goal_prompts = list(goal_prompts)
        self.baseline_prompts = list(baseline_prompts)
        # Prompts are embedded once; frames are the only per-step work.
        self.register_buffer("goal", self._prompt_mean(self.goal_prompts))
        self.register_buffer("baseline", self._prompt_mean(self.baseline_prompts))
        self.to(self.device)

    @classmethod
    def load(
        cls,
        model_name: str | Path,
        goal_prompts: Sequence[str],
        baseline_prompts: Sequence[str],
        alpha: float = 0.0,
        *,
        pretrained: str | Path | None = None,
        device: str | torch.device = "cpu",
        **kwargs,
    ) -> "CLIPReward":
        """Build from any open_clip model: name + pretrained tag / local weights file, or a local dir."""
        model, preprocess, tokenizer = load_clip(model_name, pretrained=pretrained, device=device)
        return cls(model, preprocess, tokenizer, goal_prompts, baseline_prompts, alpha, device=device, **kwargs)

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings [P, D]."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def _prompt_mean(self, prompts: Sequence[str]) -> torch.Tensor:
        mean = self.embed_prompts(prompts).mean(dim=0)
        return F.normalize(mean, dim=0) if self.renormalize_means else mean

    def pixels(self, frames: np.ndarray | Sequence[np.ndarray] | Sequence[Image.Image]) -> torch.Tensor:
        """Model-ready pixel tensor [N, 3, S, S] from uint8 frames [N, H, W, 3] or PIL images.

        Frames of any other dtype or layout are refused (a float frame in [0, 1] would otherwise be read
        as nearly black)."""
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
                raise ValueError(f"frames must be uint8 RGB [N, H, W, 3], got {frames.dtype} {frames.shape}")
            if frames.shape[1:3] == self.image_size:
                batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
                batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
                return (batch - self.pixel_mean) / self.pixel_std
        images = [f if isinstance(f, Image.Image) else Image.fromarray(_rgb_frame(f)) for f in frames]
        return torch.stack([self.preprocess(im) for im in images]).to(self.device)

    @torch.no_grad()
    def embed_frames(self, frames: np.ndarray | Sequence) -> torch.Tensor:
        """Unit image embeddings [N, D], computed in batches of `batch_size`."""
        if len(frames) == 0:
            raise ValueError("no frames to embed")
        out = []
        for start in range(0, len(frames), self.batch_size):
            pixels = self.pixels(frames[start:start + self.batch_size])
            out.append(F.normalize(self.model.encode_image(pixels).float(), dim=-1))
        return torch.cat(out)

    def reward_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Rewards [N] of unit image embeddings [N, D] (as `embed_frames` returns; others are refused)."""
        return projection_reward(embeddings.to(self.device).float(), self.goal, self.baseline, self.alpha)

    def forward(self, frames: np.ndarray | Sequence) -> torch.Tensor:
        """Rewards [N] for N frames (uint8 [N, H, W, 3] or PIL images)."""
        return self.reward_from_embeddings(self.embed_frames(frames))
