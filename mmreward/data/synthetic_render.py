"""Pixel side of the synthetic preference data: draw shapes, degrade them, animate them, encode MP4.

Pure functions of their arguments and a numpy ``Generator``: the same generator state gives the
same pixels. The dataset design (which factors differ, labels, splits) lives in ``synthetic.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Objects are drawn at this multiple of the output size and box-filtered down, so edges are
# anti-aliased the same way on every machine (PIL's own shape drawing has no anti-aliasing).
SUPERSAMPLE = 4
# A triangle's circumradius relative to the nominal radius, chosen so the three shapes cover
# similar areas (size alone should not give the shape away).
_TRIANGLE_SCALE = 1.35
_SQUARE_HALF = 0.9
# Placement uses the largest extent of any shape, so objects never touch whatever their shape.
_EXTENT = _TRIANGLE_SCALE


@dataclass(frozen=True)
class Layout:
    """Where one side's objects sit: centres ``[N, 2]`` (x, y) in output pixels at the first frame."""

    centres: np.ndarray
    radius: float
    background: tuple[int, int, int]


def sample_layout(
    rng: np.random.Generator,
    size: int,
    count: int,
    radius: float,
    displacement: tuple[float, float] = (0.0, 0.0),
    max_tries: int = 200,
) -> Layout | None:
    """Place ``count`` non-touching objects so they stay inside the frame at the start and after
    moving by ``displacement``. Returns None when no placement was found in ``max_tries``
    (the caller then draws a new radius/displacement)."""
    margin = radius * _EXTENT + 1.0
    dx, dy = displacement
    lo = np.array([margin - min(0.0, dx), margin - min(0.0, dy)])
    hi = np.array([size - margin - max(0.0, dx), size - margin - max(0.0, dy)])
    if np.any(hi <= lo):
        return None
    min_dist = 2.0 * radius * _EXTENT + 2.0
    centres: list[np.ndarray] = []
    for _ in range(max_tries):
        candidate = rng.uniform(lo, hi)
        if all(np.hypot(*(candidate - c)) >= min_dist for c in centres):
            centres.append(candidate)
            if len(centres) == count:
                break
    if len(centres) < count:
        return None
    grey = int(rng.integers(200, 246))
    tint = rng.integers(-8, 9, size=3)
    background = tuple(int(v) for v in np.clip(grey + tint, 0, 255))
    return Layout(centres=np.stack(centres), radius=radius, background=background)


def draw_objects(
    size: int,
    layout: Layout,
    offset: np.ndarray,
    shape: str,
    rgb: tuple[int, int, int],
) -> np.ndarray:
    """Render the layout's objects shifted by ``offset`` (x, y) as an ``[H, W, 3]`` uint8 frame."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), layout.background)
    pen = ImageDraw.Draw(canvas)
    r = layout.radius * SUPERSAMPLE
    for cx, cy in (layout.centres + offset) * SUPERSAMPLE:
        if shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif shape == "square":
            h = r * _SQUARE_HALF
            pen.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
        elif shape == "triangle":
            R = r * _TRIANGLE_SCALE
            angles = np.deg2rad([-90.0, 30.0, 150.0])  # apex up
            pen.polygon([(cx + R * np.cos(a), cy + R * np.sin(a)) for a in angles], fill=rgb)
        else:
            raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def add_noise(frame: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (0-255 scale), clipped to uint8."""
    noisy = frame.astype(np.float64) + rng.normal(0.0, sigma, size=frame.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def blur(frame: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur with PIL's ``radius`` (standard deviation in pixels)."""
    return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius)))


def degrade(frame: np.ndarray, kind: str, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one degradation: ``none``, ``noise`` (amount = sigma) or ``blur`` (amount = radius)."""
    if kind == "none":
        return frame
    if kind == "noise":
        return add_noise(frame, amount, rng)
    if kind == "blur":
        return blur(frame, amount)
    raise ValueError(f"unknown degradation {kind!r}; expected none, noise or blur")


def motion_offsets(
    rng: np.random.Generator,
    layout: Layout,
    size: int,
    num_frames: int,
    motion: str,
    displacement: tuple[float, float],
    jitter_px: float,
) -> np.ndarray:
    """Per-frame group offsets ``[T, 2]`` for one motion type.

    smooth: constant velocity from 0 to ``displacement``; frozen: no motion at all; jitter: the
    smooth path plus a random shake of ``jitter_px/2 .. jitter_px`` each frame, clipped so the
    objects stay inside the frame. The whole group moves together, so objects never overlap."""
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    path = t * np.asarray(displacement, dtype=np.float64)[None, :]
    if motion == "smooth":
        return path
    if motion == "frozen":
        return np.zeros_like(path)
    if motion != "jitter":
        raise ValueError(f"unknown motion {motion!r}; expected smooth, jitter or frozen")
    angle = rng.uniform(0.0, 2.0 * np.pi, size=num_frames)
    magnitude = rng.uniform(0.5 * jitter_px, jitter_px, size=num_frames)
    shake = np.stack([np.cos(angle), np.sin(angle)], axis=1) * magnitude[:, None]
    margin = layout.radius * _EXTENT + 1.0
    lo = margin - layout.centres.min(axis=0)
    hi = size - margin - layout.centres.max(axis=0)
    return np.clip(path + shake, lo, hi)


def save_png(frame: np.ndarray, path: Path) -> None:
    """Write an RGB uint8 frame as PNG (Pillow's encoder is deterministic for a fixed version)."""
    Image.fromarray(frame).save(path, format="PNG", optimize=False)
