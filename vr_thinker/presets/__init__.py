"""Protocol presets: everything that makes a VR-Thinker judge speak one released checkpoint's protocol.

A preset is a data file in this folder (``vr-thinker.yaml``: the paper's release, ``vrthinker.yaml``: the later one)
holding the system and tool prompt, the first-turn text, the frame pool and numbering, the per-call limit and what
happens above it, call/turn limits, the context cap, the memory window, the answer tags, the dimension sets and how
verdicts map to record labels, the rewards and the GRPO defaults. Each file names its sources. The code that uses a
preset is :mod:`vr_thinker.protocol` (parsing, messages), :mod:`vr_thinker.env` (the episode) and
:mod:`vr_thinker.rewards`.

    preset = load_preset("vr-thinker")                                   # the released settings
    preset = load_preset("vr-thinker", ["frames.per_video=8"])            # CPU-sized, recorded as an override
    preset = load_preset("path/to/my_preset.yaml")                       # a user's own file (may set ``base:``)

Stages record ``preset.to_dict()`` (the resolved preset, its name and its overrides) next to the weights, so a
model directory keeps the exact protocol it was trained with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mmreward.errors import MmrewardError

PRESET_DIR = Path(__file__).resolve().parent
PRESET_NAMES = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


class PresetError(MmrewardError, ValueError):
    """A preset file, name or override that cannot be used; the message names it."""


def fill(template: str, **values: Any) -> str:
    """Replace ``{name}`` for the given names only; every other brace stays literal (templates are verbatim copies
    of prompts full of JSON braces)."""
    if not values:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


@dataclass(frozen=True)
class DimensionSpec:
    """One judged dimension. key: its name in answers (``TA``); label: the record label key it is scored against;
    name / description: how the prompt presents it."""

    key: str
    label: str
    name: str
    description: str


@dataclass(frozen=True)
class PromptSpec:
    """Texts and message layout. ``system`` / ``first_turn`` are templates (see the preset files for their
    placeholders); ``tool`` is the ``select_frames`` schema written into the system turn (None: described in the
    system text itself). first_turn_media: ``video`` (the initial frames as one video input) or ``images``.
    image_side: resize frames so their longer side has this many pixels (None: as decoded)."""

    system: str
    first_turn: str
    dimension_line: str
    tool: dict[str, Any] | None = None
    overall_line: str | None = None
    first_turn_media: str = "video"
    initial_video_fps: float = 2.0
    image_side: int | None = None
    tool_reply_role: str = "user"
    tool_reply: str = ""
    tool_notice: str = "{message}"
    execution_error: str = "{message}"
    over_limit_message: str = ""
    out_of_range_message: str = ""
    dropped_image_text: str = ""


@dataclass(frozen=True)
class FrameSpec:
    """Frame pools and the tool's frame numbers. Video 1 is frames 1..per_video, Video 2 per_video+1..2*per_video.
    initial_rule: ``stride`` (``frames[::max(1, N // k)][:k]`` over the concatenated pool of N frames) or
    ``per_video_even`` (k/2 frames of each video at ``round(linspace(0, per_video - 1, k/2))``).
    over_limit: ``reduce`` (more than max_per_call: with ``reduce_probability`` a reduced list is shown, else a
    notice; the official rule) or ``reject`` (always the notice)."""

    per_video: int
    initial_count: int
    initial_rule: str
    max_per_call: int
    over_limit: str = "reject"
    reduce_probability: float = 0.0


@dataclass(frozen=True)
class LimitSpec:
    """Budgets of one episode. max_context_tokens: an assistant turn whose context + output exceed it ends the
    episode (None: no cap). memory_window: tool replies that keep their images (None: all)."""

    max_tool_calls: int
    max_turns: int
    max_new_tokens: int = 2048
    max_context_tokens: int | None = None
    memory_window: int | None = 1
    max_images: int | None = None


@dataclass(frozen=True)
class AnswerSpec:
    """Tags of an assistant turn and the answer keys. verdicts: answer value -> record label value."""

    synthesis_tag: str
    think_tag: str
    recommend_tag: str
    final_tag: str
    overall_key: str
    confidence_key: str
    confidence_values: tuple[int, ...]
    verdicts: dict[int, str]


@dataclass(frozen=True)
class CallTerms:
    """Constants of the official curiosity and call-count terms for one input modality."""

    curiosity_threshold: float
    curiosity_weight: float
    one_call: float
    per_extra_call: float
    many_calls: float
    many_calls_from: int
    add_format: bool
    scaled: bool


@dataclass(frozen=True)
class RewardSpec:
    """variant: ``official`` or ``paper``. scale_schedule: (from step, scale) of the official curiosity and call
    terms. The paper's constants: overall_weight (alpha), cot_gain (k), explore_weight (eta), explore_floor (omega)."""

    variant: str
    video: CallTerms
    image: CallTerms
    scale_schedule: tuple[tuple[int, float], ...]
    overall_weight: float
    cot_gain: float
    explore_weight: float
    explore_floor: float

    def scale_at(self, step: int | None) -> float:
        """Scale of the official curiosity and call terms at a training step (1 before the first entry)."""
        scale = 1.0
        for start, value in self.scale_schedule:
            if step is not None and step >= start:
                scale = value
        return scale


@dataclass(frozen=True)
class GRPODefaults:
    """GRPO settings the stage uses unless its config sets them (see the preset file for their sources).
    kl_in: ``reward`` (per-token -kl_coef * k3 added to the reward, summed to the end of the turn) or ``loss``.
    loss_aggregation: ``constant`` (sum of token losses / loss_constant per micro-batch), ``token_mean`` or
    ``trace_mean`` (each trace weighs the same)."""

    group_size: int
    learning_rate: float
    kl_coef: float
    kl_in: str
    clip_low: float
    clip_high: float
    loss_aggregation: str
    loss_constant: float
    advantage_eps: float
    entropy_coef: float
    temperature: float
    later_temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int


@dataclass(frozen=True)
class ProtocolPreset:
    name: str
    checkpoint: str
    prompt: PromptSpec
    frames: FrameSpec
    limits: LimitSpec
    answer: AnswerSpec
    dimension_sets: dict[str, tuple[DimensionSpec, ...]]
    default_dimensions: str
    reward: RewardSpec
    grpo: GRPODefaults
    sft: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    provenance: str = ""
    overrides: tuple[str, ...] = ()

    # --------------------------------------------------------------------------------------------- derived

    @property
    def total_frames(self) -> int:
        return 2 * self.frames.per_video

    def dimensions(self, dimension_set: str | None = None) -> tuple[DimensionSpec, ...]:
        name = dimension_set or self.default_dimensions
        if name not in self.dimension_sets:
            raise PresetError(f"preset {self.name!r} has no dimension set {name!r}; known: {sorted(self.dimension_sets)}")
        return self.dimension_sets[name]

    def numbers(self) -> dict[str, int]:
        """The numbers the prompt templates may name."""
        per, k = self.frames.per_video, self.frames.initial_count
        return {
            "per_video": per,
            "total_frames": 2 * per,
            "video_2_first": per + 1,
            "initial_count": k,
            "initial_per_video": k // 2,
            "max_per_call": self.frames.max_per_call,
        }

    def tool_schema(self) -> dict[str, Any] | None:
        """The ``select_frames`` function schema with its numbers filled in (None when the system text describes
        the tool)."""
        if self.prompt.tool is None:
            return None
        text = fill(json.dumps(self.prompt.tool, ensure_ascii=False), **self.numbers())
        return json.loads(text)

    def dimension_lines(self, dimensions: Sequence[DimensionSpec]) -> str:
        lines = [fill(self.prompt.dimension_line, index=i, name=d.name, description=d.description)
                 for i, d in enumerate(dimensions, start=1)]
        if self.prompt.overall_line:
            lines.append(fill(self.prompt.overall_line, index=len(dimensions) + 1))
        return "\n".join(lines)

    def system_text(self, dimensions: Sequence[DimensionSpec]) -> str:
        tool = self.tool_schema()
        tools = json.dumps({"type": "function", "function": tool}, ensure_ascii=False) if tool is not None else ""
        return fill(self.prompt.system, tools=tools, dimension_lines=self.dimension_lines(dimensions), **self.numbers())

    def first_turn_text(self, prompt: str, dimensions: Sequence[DimensionSpec]) -> str:
        return fill(self.prompt.first_turn, prompt=prompt, dimension_lines=self.dimension_lines(dimensions),
                    **self.numbers())

    # ----------------------------------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        """The resolved preset (JSON-ready): what stages write next to the weights and into manifests."""
        out = asdict(self)
        out["answer"]["verdicts"] = {str(k): v for k, v in self.answer.verdicts.items()}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "<preset>") -> ProtocolPreset:
        """Build from a resolved dict (a preset file after ``base:`` merging, or :meth:`to_dict`'s output)."""
        try:
            answer = dict(raw["answer"])
            answer["verdicts"] = {int(k): str(v) for k, v in answer["verdicts"].items()}
            answer["confidence_values"] = tuple(int(v) for v in answer["confidence_values"])
            reward_raw = raw["reward"]
            official = reward_raw.get("official", reward_raw)
            paper = reward_raw.get("paper", reward_raw)
            reward = RewardSpec(
                variant=str(reward_raw["variant"]),
                video=CallTerms(**official["video"]),
                image=CallTerms(**official["image"]),
                scale_schedule=tuple((int(s), float(v)) for s, v in official["scale_schedule"]),
                overall_weight=float(paper["overall_weight"]),
                cot_gain=float(paper["cot_gain"]),
                explore_weight=float(paper["explore_weight"]),
                explore_floor=float(paper["explore_floor"]),
            )
            preset = cls(
                name=str(raw["name"]),
                checkpoint=str(raw.get("checkpoint", "")),
                prompt=PromptSpec(**raw["prompt"]),
                frames=FrameSpec(**raw["frames"]),
                limits=LimitSpec(**raw["limits"]),
                answer=AnswerSpec(**answer),
                dimension_sets={k: tuple(DimensionSpec(**d) for d in v) for k, v in raw["dimension_sets"].items()},
                default_dimensions=str(raw["default_dimensions"]),
                reward=reward,
                grpo=GRPODefaults(**raw["grpo"]),
                sft=dict(raw.get("sft") or {}),
                sources=dict(raw.get("sources") or {}),
                provenance=str(raw.get("provenance", "")),
                overrides=tuple(raw.get("overrides") or ()),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PresetError(f"{where}: not a complete preset ({type(err).__name__}: {err})") from err
        preset.validate(where)
        return preset

    def validate(self, where: str = "<preset>") -> None:
        problems = []
        if self.prompt.first_turn_media not in ("video", "images"):
            problems.append("prompt.first_turn_media must be video or images")
        if self.prompt.tool_reply_role not in ("user", "tool"):
            problems.append("prompt.tool_reply_role must be user or tool")
        if self.frames.initial_rule not in ("stride", "per_video_even"):
            problems.append("frames.initial_rule must be stride or per_video_even")
        if self.frames.over_limit not in ("reduce", "reject"):
            problems.append("frames.over_limit must be reduce or reject")
        if self.frames.per_video < 1 or self.frames.max_per_call < 1 or self.frames.initial_count < 2:
            problems.append("frames.per_video and max_per_call must be >= 1, initial_count >= 2")
        if self.frames.initial_count % 2:
            problems.append("frames.initial_count must be even (half of the frames are each video's)")
        if self.limits.max_turns < 1 or self.limits.max_tool_calls < 0:
            problems.append("limits.max_turns must be >= 1 and max_tool_calls >= 0")
        if self.reward.variant not in ("official", "paper"):
            problems.append("reward.variant must be official or paper")
        if self.grpo.kl_in not in ("reward", "loss"):
            problems.append("grpo.kl_in must be reward or loss")
        if self.grpo.loss_aggregation not in ("constant", "token_mean", "trace_mean"):
            problems.append("grpo.loss_aggregation must be constant, token_mean or trace_mean")
        if self.default_dimensions not in self.dimension_sets:
            problems.append(f"default_dimensions {self.default_dimensions!r} is not a dimension set")
        for name, dims in self.dimension_sets.items():
            keys = [d.key for d in dims]
            if len(set(keys)) != len(keys) or self.answer.overall_key in keys or self.answer.confidence_key in keys:
                problems.append(f"dimension set {name!r}: keys must be unique and not {self.answer.overall_key}/"
                                f"{self.answer.confidence_key}")
        if sorted(self.answer.verdicts) != [0, 1, 2] or sorted(self.answer.verdicts.values()) != ["a", "b", "tie"]:
            problems.append("answer.verdicts must map 0, 1, 2 to tie, a, b")
        if problems:
            raise PresetError(f"{where}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------------ loading


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def _read_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise PresetError(f"{path}: 'base' chain loops")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PresetError(f"{path}: cannot read preset ({err})") from err
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: a preset file is a YAML mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    # Sources and provenance describe this file only; every other field not given is the base's.
    inherited = {k: v for k, v in _read_file(_preset_path(str(base), path.parent), (*seen, path)).items()
                 if k not in ("sources", "provenance", "checkpoint")}
    return _merge(inherited, raw)


def _preset_path(spec: str, folder: Path = PRESET_DIR) -> Path:
    if spec in PRESET_NAMES:
        return PRESET_DIR / f"{spec}.yaml"
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = folder / spec
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise PresetError(f"unknown preset {spec!r}: give one of {PRESET_NAMES} or a preset YAML file")


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    return value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``frames.per_video=8`` or a mapping); every key must exist in the preset."""
    items = overrides.items() if isinstance(overrides, Mapping) else [_split(o) for o in overrides]
    out = json.loads(json.dumps(raw))  # a deep copy of plain data
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise PresetError(f"override {key!r}: the preset has no {part!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise PresetError(f"override {key!r}: the preset has no such field")
        node[parts[-1]] = _parse_value(value) if isinstance(value, str) and not isinstance(overrides, Mapping) else value
    return out


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise PresetError(f"override {item!r}: expected key=value, e.g. frames.per_video=8")
    return key.strip(), value.strip()


def load_preset(spec: str | Path = "vr-thinker", overrides: Sequence[str] | Mapping[str, Any] = ()) -> ProtocolPreset:
    """A preset by name (:data:`PRESET_NAMES`) or YAML path, with dotted-key overrides recorded in it."""
    path = _preset_path(str(spec))
    raw = _read_file(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
        listed = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
        raw["overrides"] = listed
    return ProtocolPreset.from_dict(raw, where=str(path))


def preset_fields() -> list[str]:
    """Top-level field names of a preset (for error messages and docs)."""
    return [f.name for f in fields(ProtocolPreset)]
