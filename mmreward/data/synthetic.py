"""Seeded synthetic preference pairs (images and videos) whose ground truth is known.

Each pair shows coloured shapes for a prompt such as "two red circles". The two sides differ in
a chosen set of factors ("dimensions"), and the label of each dimension follows from those
factors alone:

- TA (text alignment): one side draws exactly the prompt, the other changes one attribute. Images:
  the colour; videos: the colour, count or shape.
- VQ (visual quality): one side is clean, the other is degraded. Images: heavy Gaussian noise;
  videos: heavy noise or blur.
- MQ (motion quality, videos only): one side moves smoothly, the other jitters or is frozen.

The image defaults keep to what a tiny random-init VLM learns within a few CPU minutes, since the
image set is the learning check's (issue 4): colour mismatches and noise are learned, while
count mismatches (30 % of TA pairs: TA 0.68-0.77 after 1200 steps), shape mismatches and blur
stay near chance for far longer. ``image_ta_attribute_weights`` and ``image_degradations`` put
them back; the video set keeps them.

A dimension that does not differ is labelled "tie"; ``overall`` is the label of the first
non-tie dimension in ``SyntheticConfig.overall_priority`` (default TA, then MQ, then VQ), or
"tie" when every dimension ties. ``meta["varies"]`` lists the differing dimensions, so a trainer
can build a curriculum (``select_varying(records, {"VQ"})`` is a quality-only warm-up set).

Randomness comes only from numpy Generators keyed by ``[seed, purpose, modality, split, index]``,
so the same seed gives byte-identical JSONL, PNG and MP4 files and splits never share a pair
stream. Prompts are partitioned between train/val/test, so held-out prompts are unseen
combinations of seen colours, shapes and counts.
The record format and the set are documented in data/FORMATS.md.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import av
import numpy as np

from mmreward.data import synthetic_render as render
from mmreward.data.media import write_video
from mmreward.data.records import PreferenceRecord, write_records

SPLITS = ("train", "val", "test")
MODALITIES = ("images", "videos")
# Canonical order of the dimension labels (VideoAlign's order).
IMAGE_DIMS = ("VQ", "TA")
VIDEO_DIMS = ("VQ", "MQ", "TA")
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
# First entry of the generator key, one per use, so streams for different uses never coincide.
_PURPOSE_PROMPTS, _PURPOSE_KINDS, _PURPOSE_PAIR = 0, 1, 2


@dataclass(frozen=True)
class SplitSizes:
    """Number of pairs per split."""

    train: int
    val: int
    test: int

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _default_colors() -> dict[str, tuple[int, int, int]]:
    # Saturated and far apart in RGB, all far from the light grey backgrounds.
    return {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 90, 230),
        "yellow": (240, 200, 20),
    }


@dataclass
class SyntheticConfig:
    """What the synthetic set contains. Fractions are of the image/video side (``*_frac``) or of
    the pairs in a split (``*_share``); pixel amounts scale with the size through the fractions.

    Fields:
        image_splits / video_splits: pairs per split (train, val, test).
        image_size / video_size: square side in pixels (video: even, for yuv420p).
        num_frames / fps: video length in frames and its frame rate.
        colors: colour name -> RGB used in prompts and drawings.
        shapes: subset of circle, square, triangle.
        counts: object counts that prompts may name (1-5).
        prompt_fractions: share of all colour x shape x count prompts given to train, val, test
            (disjoint; train always covers every colour, shape and count).
        tie_share: share of pairs where nothing differs (every label, overall too, is "tie").
        mixed_share: share of pairs where two dimensions differ at once (winners drawn
            independently, so some of them conflict and ``overall`` follows the priority).
        dim_weights: relative frequency of each dimension among the single-dimension pairs.
        image_ta_attribute_weights / video_ta_attribute_weights: relative frequency of the attribute
            (color, count, shape) a text-alignment mismatch changes.
        overall_priority: dimensions in the order that decides ``overall``.
        image_radius_frac / video_radius_frac: object radius range, fraction of the side.
        noise_sigma: Gaussian noise standard deviation range on the 0-255 scale.
        blur_frac: Gaussian blur radius range, fraction of the side.
        image_degradations / video_degradations: the kinds a VQ loser gets (noise, blur).
        degradations: when set, used for both modalities instead of the two fields above.
        motion_faults: the kinds an MQ loser gets (jitter, frozen).
        displacement_frac: distance a smooth clip travels over its length, fraction of the side.
        jitter_frac: per-frame shake of a jittery clip (half of it to all of it), fraction of the side.
        video_codec / qp: PyAV encoder and its constant quantiser (x264/x265 only).
    """

    image_splits: SplitSizes = field(default_factory=lambda: SplitSizes(1024, 128, 256))
    video_splits: SplitSizes = field(default_factory=lambda: SplitSizes(576, 32, 64))  # 192 overfit in 800 steps
    image_size: int = 84
    video_size: int = 84
    num_frames: int = 16
    fps: int = 8
    colors: dict[str, tuple[int, int, int]] = field(default_factory=_default_colors)
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    counts: tuple[int, ...] = (1, 2, 3)
    prompt_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    tie_share: float = 0.15
    mixed_share: float = 0.10
    dim_weights: dict[str, float] = field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    image_ta_attribute_weights: dict[str, float] = field(default_factory=lambda: {"color": 1.0})
    video_ta_attribute_weights: dict[str, float] = field(default_factory=lambda: {"color": 1.0})
    image_ta_loser_from_split: bool = False
    video_ta_loser_from_split: bool = True
    overall_priority: tuple[str, ...] = ("TA", "MQ", "VQ")
    image_radius_frac: tuple[float, float] = (0.13, 0.16)
    video_radius_frac: tuple[float, float] = (0.10, 0.12)
    noise_sigma: tuple[float, float] = (55.0, 80.0)
    blur_frac: tuple[float, float] = (0.03, 0.045)
    image_degradations: tuple[str, ...] = ("noise",)
    video_degradations: tuple[str, ...] = ("noise",)  # blur is invisible to the tiny frozen tower at 84 px
    degradations: tuple[str, ...] | None = None
    motion_faults: tuple[str, ...] = ("jitter", "frozen")
    displacement_frac: tuple[float, float] = (0.25, 0.35)  # at 0.15-0.25 a frozen clip was hard to tell apart
    jitter_frac: tuple[float, float] = (0.12, 0.18)
    video_codec: str = "libx264"
    qp: int = 18

    def __post_init__(self) -> None:
        problems = []
        for name in ("image_splits", "video_splits"):
            if any(n < 0 for n in getattr(self, name).as_dict().values()):
                problems.append(f"{name} must be >= 0")
        if self.video_size % 2:
            problems.append("video_size must be even (yuv420p)")
        if self.num_frames < 2:
            problems.append("num_frames must be >= 2 to show motion")
        if len(self.colors) < 2 or len(self.shapes) < 2 or len(self.counts) < 2:
            problems.append("need at least two colours, shapes and counts (mismatches change one)")
        if unknown := set(self.shapes) - {"circle", "square", "triangle"}:
            problems.append(f"unknown shapes {sorted(unknown)}")
        if unknown := set(self.counts) - set(_COUNT_WORDS):
            problems.append(f"counts must be within {sorted(_COUNT_WORDS)}, got {sorted(unknown)}")
        if len(self.prompt_fractions) != 3 or min(self.prompt_fractions) <= 0:
            problems.append("prompt_fractions needs three positive entries (train, val, test)")
        if not (0 <= self.tie_share and 0 <= self.mixed_share and self.tie_share + self.mixed_share <= 1):
            problems.append("tie_share and mixed_share must be >= 0 and sum to <= 1")
        if set(self.dim_weights) != set(VIDEO_DIMS) or min(self.dim_weights.values()) < 0:
            problems.append(f"dim_weights needs non-negative weights for exactly {VIDEO_DIMS}")
        for name in ("image_ta_attribute_weights", "video_ta_attribute_weights"):
            weights = getattr(self, name)
            if set(weights) - {"color", "count", "shape"} or min(weights.values(), default=0) < 0 or not any(
                w > 0 for w in weights.values()
            ):
                problems.append(f"{name}: keys among color/count/shape, weights >= 0, one weight > 0")
        if sorted(self.overall_priority) != sorted(VIDEO_DIMS):
            problems.append(f"overall_priority must order exactly {VIDEO_DIMS}")
        for name in ("image_degradations", "video_degradations", "degradations"):
            kinds = getattr(self, name)
            if kinds is not None and (not kinds or not set(kinds) <= {"noise", "blur"}):
                problems.append(f"{name} must be a non-empty subset of noise/blur, got {kinds}")
        if not self.motion_faults or not set(self.motion_faults) <= {"jitter", "frozen"}:
            problems.append(f"motion_faults must be a non-empty subset of jitter/frozen, got {self.motion_faults}")
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))

    def degradation_kinds(self, video: bool) -> tuple[str, ...]:
        """The degradations a VQ loser of this modality gets."""
        if self.degradations is not None:
            return tuple(self.degradations)
        return tuple(self.video_degradations if video else self.image_degradations)

    def ta_attribute_weights(self, video: bool) -> dict[str, float]:
        """Relative frequency of each attribute a TA mismatch of this modality changes."""
        return self.video_ta_attribute_weights if video else self.image_ta_attribute_weights

    def ta_loser_from_split(self, video: bool) -> bool:
        """Whether a TA loser of this modality draws another prompt of the pair's split."""
        return self.video_ta_loser_from_split if video else self.image_ta_loser_from_split


@dataclass(frozen=True)
class ObjectSpec:
    """What a side draws (and what a prompt names): ``count`` objects of one colour and shape."""

    color: str
    shape: str
    count: int

    def prompt(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{_COUNT_WORDS[self.count]} {self.color} {noun}"


@dataclass(frozen=True)
class SideSpec:
    """Every generating factor of one side. ``amount`` is the noise sigma or blur radius (pixels),
    0 when clean; the motion fields are None for images."""

    objects: ObjectSpec
    radius_px: float
    degradation: str = "none"
    amount: float = 0.0
    motion: str | None = None
    motion_px: float | None = None
    jitter_px: float | None = None


@dataclass(frozen=True)
class PairPlan:
    """One pair before rendering: its prompt, sides, differing dimensions and labels."""

    target: ObjectSpec
    varies: tuple[str, ...]
    ta_attribute: str | None
    a: SideSpec
    b: SideSpec
    label: dict[str, str]


def overall_label(labels: dict[str, str], priority: Sequence[str]) -> str:
    """The first non-tie label among ``priority``'s dimensions, else "tie"."""
    for dim in priority:
        if labels.get(dim, "tie") != "tie":
            return labels[dim]
    return "tie"


def _rng(seed: int, purpose: int, modality: int = 0, split: int = 0, index: int = 0) -> np.random.Generator:
    # Fixed-length keys: distinct keys give independent streams.
    return np.random.default_rng([seed, purpose, modality, split, index])


def split_prompts(config: SyntheticConfig, seed: int) -> dict[str, list[ObjectSpec]]:
    """Partition every colour x shape x count prompt between the splits (shared by images and
    videos). Train is redrawn until it covers every colour, shape and count."""
    specs = [ObjectSpec(c, s, n) for c in config.colors for s in config.shapes for n in config.counts]
    total = len(specs)
    fractions = np.asarray(config.prompt_fractions, dtype=np.float64) / sum(config.prompt_fractions)
    n_val = max(1, math.floor(fractions[1] * total + 0.5))
    n_test = max(1, math.floor(fractions[2] * total + 0.5))
    n_train = total - n_val - n_test
    if n_train < 1:
        raise ValueError(f"only {total} prompts: too few to give train, val and test their own")
    rng = _rng(seed, _PURPOSE_PROMPTS)
    for _ in range(1000):
        order = [specs[i] for i in rng.permutation(total)]
        train = order[:n_train]
        covered = (
            {o.color for o in train} == set(config.colors)
            and {o.shape for o in train} == set(config.shapes)
            and {o.count for o in train} == set(config.counts)
        )
        if covered:
            return {"train": train, "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    raise ValueError(
        f"could not give train ({n_train} of {total} prompts) every colour, shape and count; "
        "raise prompt_fractions[0]"
    )


def _largest_remainder(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to weights (ties broken by key order)."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def allocate_kinds(n: int, dims: Sequence[str], config: SyntheticConfig, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """The differing dimensions of each of n pairs: exactly round(n * tie_share) ties (``()``),
    round(n * mixed_share) two-dimension pairs, the rest single dimensions by ``dim_weights``;
    shuffled."""
    if n == 0:
        return []  # an empty split needs no weights (a set without images may zero the image dimensions)
    n_tie = math.floor(n * config.tie_share + 0.5)
    n_mixed = min(n - n_tie, math.floor(n * config.mixed_share + 0.5))
    weights = {d: config.dim_weights[d] for d in dims}
    if sum(weights.values()) <= 0:
        raise ValueError(f"dim_weights gives zero weight to all of {tuple(dims)}")
    kinds: list[tuple[str, ...]] = [()] * n_tie
    for dim, k in _largest_remainder(n - n_tie - n_mixed, weights).items():
        kinds += [(dim,)] * k
    combos = list(itertools.combinations(dims, 2))
    kinds += [combos[i] for i in rng.integers(len(combos), size=n_mixed)]
    return [kinds[i] for i in rng.permutation(n)]


def _choose(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _mismatch(target: ObjectSpec, attribute: str, config: SyntheticConfig, rng: np.random.Generator) -> ObjectSpec:
    """The target with one attribute changed to another allowed value."""
    if attribute == "color":
        return replace(target, color=_choose(rng, [c for c in config.colors if c != target.color]))
    if attribute == "shape":
        return replace(target, shape=_choose(rng, [s for s in config.shapes if s != target.shape]))
    return replace(target, count=_choose(rng, [n for n in config.counts if n != target.count]))


def _differs_only_in(x: ObjectSpec, y: ObjectSpec, attribute: str) -> bool:
    return all((getattr(x, a) != getattr(y, a)) == (a == attribute) for a in ("color", "shape", "count"))


def _ta_attribute(rng: np.random.Generator, video: bool, config: SyntheticConfig) -> str:
    weights = config.ta_attribute_weights(video)
    attrs = list(weights)
    return _choose(rng, attrs, [weights[a] for a in attrs])


def _prompt_pair(
    rng: np.random.Generator, prompts: Sequence[ObjectSpec], attribute: str
) -> tuple[ObjectSpec, ObjectSpec] | None:
    """(prompt, loser): an ordered pair of the split's prompts that differ in ``attribute`` alone, drawn
    uniformly, so every drawing loses as often as it wins; None when the split has no such pair."""
    pairs = [(x, y) for x in prompts for y in prompts if _differs_only_in(x, y, attribute)]
    return pairs[int(rng.integers(len(pairs)))] if pairs else None


def plan_pair(
    rng: np.random.Generator,
    video: bool,
    varies: tuple[str, ...],
    prompts: Sequence[ObjectSpec],
    config: SyntheticConfig,
) -> PairPlan:
    """Draw a pair's factors: both sides start as a clean (smoothly moving) drawing of the prompt,
    then for each dimension in ``varies`` a random side loses it."""
    size = config.video_size if video else config.image_size
    radius_frac = config.video_radius_frac if video else config.image_radius_frac
    target = _choose(rng, prompts)
    ta_attribute, ta_loser = None, None
    if "TA" in varies and config.ta_loser_from_split(video):
        ta_attribute = _ta_attribute(rng, video, config)
        if (pair := _prompt_pair(rng, prompts, ta_attribute)) is not None:
            target, ta_loser = pair
    sides: dict[str, SideSpec] = {}
    for name in ("a", "b"):
        side = SideSpec(objects=target, radius_px=round(float(rng.uniform(*radius_frac)) * size, 2))
        if video:
            side = replace(side, motion="smooth", motion_px=round(float(rng.uniform(*config.displacement_frac)) * size, 2))
        sides[name] = side
    dims = VIDEO_DIMS if video else IMAGE_DIMS
    label = {d: "tie" for d in dims}
    for dim in varies:
        winner = _choose(rng, ("a", "b"))
        loser = "b" if winner == "a" else "a"
        label[dim] = winner
        if dim == "TA":
            ta_attribute = ta_attribute or _ta_attribute(rng, video, config)
            objects = ta_loser or _mismatch(target, ta_attribute, config, rng)
            sides[loser] = replace(sides[loser], objects=objects)
        elif dim == "VQ":
            kind = _choose(rng, config.degradation_kinds(video))
            if kind == "noise":
                amount = round(float(rng.uniform(*config.noise_sigma)), 1)
            else:
                amount = round(float(rng.uniform(*config.blur_frac)) * size, 2)
            sides[loser] = replace(sides[loser], degradation=kind, amount=amount)
        elif dim == "MQ":
            fault = _choose(rng, config.motion_faults)
            jitter = round(float(rng.uniform(*config.jitter_frac)) * size, 2) if fault == "jitter" else None
            # A frozen clip records that it travels nowhere; a jittery one keeps its smooth path.
            motion_px = 0.0 if fault == "frozen" else sides[loser].motion_px
            sides[loser] = replace(sides[loser], motion=fault, motion_px=motion_px, jitter_px=jitter)
        else:
            raise ValueError(f"unknown dimension {dim!r}")
    label["overall"] = overall_label(label, config.overall_priority)
    return PairPlan(target, tuple(d for d in dims if d in varies), ta_attribute, sides["a"], sides["b"], label)


def _place(rng: np.random.Generator, side: SideSpec, size: int) -> tuple[render.Layout, tuple[float, float]]:
    """A layout for the side and, for a moving side, a direction that keeps it in frame."""
    for _ in range(100):
        displacement = (0.0, 0.0)
        if side.motion_px:
            angle = rng.uniform(0.0, 2.0 * np.pi)
            displacement = (side.motion_px * float(np.cos(angle)), side.motion_px * float(np.sin(angle)))
        layout = render.sample_layout(rng, size, side.objects.count, side.radius_px, displacement)
        if layout is not None:
            return layout, displacement
    raise RuntimeError(
        f"cannot fit {side.objects.count} objects of radius {side.radius_px}px moving "
        f"{side.motion_px}px into {size}px; lower the radius/displacement fractions"
    )


def render_image(rng: np.random.Generator, side: SideSpec, config: SyntheticConfig) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 drawing of one image side."""
    size = config.image_size
    layout, _ = _place(rng, side, size)
    frame = render.draw_objects(size, layout, np.zeros(2), side.objects.shape, config.colors[side.objects.color])
    return render.degrade(frame, side.degradation, side.amount, rng)


def render_video(rng: np.random.Generator, side: SideSpec, config: SyntheticConfig) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 frames of one video side (fresh noise every frame)."""
    size = config.video_size
    layout, displacement = _place(rng, side, size)
    offsets = render.motion_offsets(
        rng, layout, size, config.num_frames, side.motion, displacement, side.jitter_px or 0.0
    )
    rgb = config.colors[side.objects.color]
    frames = [render.draw_objects(size, layout, off, side.objects.shape, rgb) for off in offsets]
    return np.stack([render.degrade(f, side.degradation, side.amount, rng) for f in frames])


def side_meta(side: SideSpec, target: ObjectSpec, video: bool) -> dict:
    """The JSON-ready factors of one side, as stored in ``meta["a"]`` / ``meta["b"]``."""
    meta = {
        "color": side.objects.color,
        "shape": side.objects.shape,
        "count": side.objects.count,
        "matches_prompt": side.objects == target,
        "radius_px": side.radius_px,
        "degradation": side.degradation,
        "noise_sigma": side.amount if side.degradation == "noise" else 0.0,
        "blur_radius": side.amount if side.degradation == "blur" else 0.0,
    }
    if video:
        meta.update(motion=side.motion, motion_px=side.motion_px, jitter_px=side.jitter_px or 0.0)
    return meta


def _check_encoder(codec: str) -> None:
    try:
        av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError as err:
        raise RuntimeError(
            f"video encoder {codec!r} is not available in this PyAV build ({err}); "
            "set SyntheticConfig.video_codec to one that is, e.g. 'mpeg4'"
        ) from err


def _encoder_options(config: SyntheticConfig) -> dict[str, str]:
    # Constant QP, not CRF: x264's CRF rate control (macroblock tree) gave different bytes from
    # run to run for identical input; constant QP did not. One thread leaves the other cores free.
    options = {"threads": "1"}
    if config.video_codec in ("libx264", "libx265"):
        options.update(qp=str(config.qp), preset="veryfast")
    return options


def _write_split(
    folder: Path,
    modality: str,
    split: str,
    n: int,
    prompts: Sequence[ObjectSpec],
    seed: int,
    config: SyntheticConfig,
) -> Path:
    video = modality == "videos"
    m, s = MODALITIES.index(modality) + 1, SPLITS.index(split) + 1
    (folder / split).mkdir(parents=True, exist_ok=True)
    kinds = allocate_kinds(n, VIDEO_DIMS if video else IMAGE_DIMS, config, _rng(seed, _PURPOSE_KINDS, m, s))
    records = []
    for index, varies in enumerate(kinds):
        rng = _rng(seed, _PURPOSE_PAIR, m, s, index)
        plan = plan_pair(rng, video, varies, prompts, config)
        pair_id = f"{'vid' if video else 'img'}-{split}-{index:06d}"
        sides = {}
        for name, side in (("a", plan.a), ("b", plan.b)):
            # Media paths in the records are relative to the JSONL folder (``folder``).
            if video:
                rel = f"{split}/{pair_id}_{name}.mp4"
                frames = render_video(rng, side, config)
                write_video(folder / rel, frames, fps=config.fps, codec=config.video_codec, options=_encoder_options(config))
                sides[name] = {"video": rel}
            else:
                rel = f"{split}/{pair_id}_{name}.png"
                render.save_png(render_image(rng, side, config), folder / rel)
                sides[name] = {"image": rel}
        meta = {
            "source": "synthetic",
            "modality": "video" if video else "image",
            "split": split,
            "seed": seed,
            "index": index,
            "varies": list(plan.varies),
            "ta_attribute": plan.ta_attribute,
            "target": asdict(plan.target),
            "a": side_meta(plan.a, plan.target, video),
            "b": side_meta(plan.b, plan.target, video),
        }
        records.append(
            {"id": pair_id, "prompt": plan.target.prompt(), "a": sides["a"], "b": sides["b"], "label": plan.label, "meta": meta}
        )
    path = folder / f"{split}.jsonl"
    write_records(path, records)
    return path


def generate_synthetic(out_dir: str | Path, seed: int = 0, config: SyntheticConfig | None = None) -> dict[str, Path]:
    """Write the synthetic set under ``out_dir`` and return its files.

    Layout: ``images/{train,val,test}.jsonl`` with PNGs in ``images/<split>/``, the same under
    ``videos/`` with MP4s, and ``manifest.json`` (seed, resolved config, prompts per split,
    pair counts). Keys of the result: ``"images/train"`` ... ``"videos/test"``, ``"manifest"``.
    Existing files of the same names are overwritten."""
    config = config or SyntheticConfig()
    if sum(config.video_splits.as_dict().values()):
        _check_encoder(config.video_codec)
    out = Path(out_dir)
    prompts = split_prompts(config, seed)
    paths: dict[str, Path] = {}
    for modality, sizes in (("images", config.image_splits), ("videos", config.video_splits)):
        for split, n in sizes.as_dict().items():
            paths[f"{modality}/{split}"] = _write_split(out / modality, modality, split, n, prompts[split], seed, config)
    manifest = {
        "generator": "mmreward.data.synthetic",
        "seed": seed,
        "config": asdict(config),
        "prompts": {split: [p.prompt() for p in specs] for split, specs in prompts.items()},
        "pairs": {
            f"{modality}/{split}": n
            for modality, sizes in (("images", config.image_splits), ("videos", config.video_splits))
            for split, n in sizes.as_dict().items()
        },
    }
    paths["manifest"] = out / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return paths


def select_varying(records: Iterable[PreferenceRecord], dims: Iterable[str]) -> list[PreferenceRecord]:
    """Records whose differing dimensions (``meta["varies"]``) are non-empty and all within
    ``dims``; e.g. ``select_varying(train, {"VQ"})`` is a quality-only warm-up set."""
    allowed = set(dims)
    picked = []
    for record in records:
        if "varies" not in record.meta:
            raise ValueError(f"record {record.id!r} has no meta['varies'] (not a synthetic record?)")
        varies = set(record.meta["varies"])
        if varies and varies <= allowed:
            picked.append(record)
    return picked
