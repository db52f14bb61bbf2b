"""The VR-Thinker judge: a model directory plus the tool loop of its protocol preset, comparing two videos.

    judge = VRThinkerJudge.from_pretrained("runs/vrt_sft")                     # a stage output (preset recorded)
    judge = VRThinkerJudge.from_pretrained("models/vr-thinker", preset="vr-thinker")   # a released checkpoint
    result = judge.compare("two red circles", "a.mp4", "b.mp4")
    result.verdicts         # {"TA": 1, "VQ": 0, "MQ": 2, "OA": 2}; 1 = video_a, 2 = video_b, 0 = tie
    result.labels()         # {"TA": "a", "VQ": "tie", "MQ": "b", "overall": "b"} (record label convention)
    result.html()           # the trace: each turn's reasoning and the frames the model looked at

A model directory written by a VR-Thinker stage holds ``vr_thinker.json``: the resolved preset and the dimensions
the model was trained with; the judge uses them unless told otherwise. Generation runs through the rollout engine
(:class:`~vr_thinker.rollout.HFRolloutEngine`: batched, KV cache kept across turns), greedy by default.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
from mmreward.data.media import VideoClip
from mmreward.data.records import PreferenceRecord
from vr_thinker.env import EpisodeStatus, VideoPairEnv
from vr_thinker.presets import DimensionSpec, PresetError, ProtocolPreset, load_preset
from vr_thinker.protocol import OVERALL, label_verdicts, verdict_labels
from vr_thinker.rewards import accuracy
from vr_thinker.rollout import HFRolloutEngine, RolloutTrace, SamplingConfig

JUDGE_CONFIG_NAME = "vr_thinker.json"
Video = str | Path | VideoClip


def save_judge_config(model_dir: str | Path, preset: ProtocolPreset, dimensions: Sequence[DimensionSpec]) -> Path:
    """Record the protocol (resolved preset) and dimensions a model was trained with next to its weights."""
    path = Path(model_dir) / JUDGE_CONFIG_NAME
    payload = {"preset": preset.to_dict(), "dimensions": [asdict(d) for d in dimensions]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_judge_config(model_dir: str | Path) -> tuple[ProtocolPreset, tuple[DimensionSpec, ...]] | None:
    """(preset, dimensions) saved with a model, or None when the directory has no judge config."""
    path = Path(model_dir) / JUDGE_CONFIG_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        preset = ProtocolPreset.from_dict(payload["preset"], where=str(path))
        return preset, tuple(DimensionSpec(**d) for d in payload["dimensions"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, PresetError) as err:
        raise PresetError(f"{path}: not a valid judge config ({err})") from err


def resolve_dimensions(preset: ProtocolPreset, dimensions: str | Sequence[DimensionSpec] | None
                       ) -> tuple[DimensionSpec, ...]:
    """A dimension set name of the preset, explicit dimensions, or the preset's default set."""
    if dimensions is None or isinstance(dimensions, str):
        return tuple(preset.dimensions(dimensions))
    return tuple(dimensions)


@dataclass
class JudgeResult:
    """Verdicts by answer key (1|2|0, 1 = video_a), the episode status, the generation record (``trace``: ids,
    texts, timings per turn) and the finished environment (``env``: messages, frames shown, turn checks)."""

    verdicts: dict[str, int]
    status: str
    trace: RolloutTrace
    env: VideoPairEnv

    @property
    def format_valid(self) -> bool:
        """Every turn was well-formed and the episode ended with a final answer."""
        return self.status == EpisodeStatus.ANSWERED.value and self.trace.outcome.format_valid

    @property
    def num_tool_calls(self) -> int:
        return self.trace.outcome.num_tool_calls

    def labels(self) -> dict[str, str]:
        """The verdicts as record label values ("a"/"b"/"tie") by label key ("overall" included)."""
        return verdict_labels(self.verdicts, self.env.preset, self.env.dimensions)

    def preference(self, label_key: str = OVERALL) -> str | None:
        """"a" / "b" / "tie" for a label key, None when the model gave no verdict for it."""
        return self.labels().get(label_key)

    def html(self, title: str = "", label: Mapping[str, str] | None = None) -> str:
        from vr_thinker.trace_html import render_trace_html

        return render_trace_html(self.env, title=title, label=label)


@dataclass
class JudgeMetrics:
    """Scores of a judge on labelled pairs. Accuracies count ties as a third class; a missing verdict is wrong.

    format_valid_rate: share of episodes whose every turn was valid and that ended with an answer.
    overall_accuracy: share with the right overall verdict. dimension_accuracy: per label key.
    mean_accuracy_reward: mean of the paper's accuracy reward (half overall, half mean over dimensions).
    all_right_rate: share with every verdict right (the rejection-sampling rule, format aside).
    mean_tool_calls: accepted ``select_frames`` calls per episode.
    """

    pairs: int
    format_valid_rate: float
    overall_accuracy: float
    dimension_accuracy: dict[str, float]
    mean_accuracy_reward: float
    all_right_rate: float
    mean_tool_calls: float
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VRThinkerJudge:
    """Compare two videos with a VR-Thinker model under a protocol preset (the one it was trained with).

    sampling: how turns are generated (default: greedy, the preset's token limit per turn).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        preset: ProtocolPreset,
        dimensions: str | Sequence[DimensionSpec] | None = None,
        sampling: SamplingConfig | None = None,
        batch_size: int = 8,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.preset = preset
        self.dimensions = resolve_dimensions(preset, dimensions)
        self.sampling = sampling or SamplingConfig(do_sample=False, max_new_tokens=preset.limits.max_new_tokens)
        self.batch_size = batch_size
        self.engine = HFRolloutEngine(model, processor)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: str = "auto",
        device: str | torch.device | None = None,
        preset: str | Path | ProtocolPreset | None = None,
        dimensions: str | Sequence[DimensionSpec] | None = None,
        preset_overrides: Sequence[str] = (),
        sampling: SamplingConfig | None = None,
        batch_size: int = 8,
    ) -> VRThinkerJudge:
        """Load a model directory: a stage output (its recorded preset) or a released checkpoint with ``preset``
        named (``vr-thinker`` / ``vrthinker`` / a preset file). ``dimensions``: a dimension set of the preset."""
        saved = load_judge_config(path)
        if preset is None and saved is None:
            raise ValueError(f"{path}: no {JUDGE_CONFIG_NAME}; name the protocol preset (e.g. preset='vr-thinker')")
        if isinstance(preset, ProtocolPreset):
            chosen = preset
        elif preset is not None:
            chosen = load_preset(preset, preset_overrides)
        else:
            chosen = saved[0]  # type: ignore[index]
        if dimensions is None and saved is not None and preset is None:
            dimensions = saved[1]
        model, processor = load_vlm(VLMLoadConfig(path=str(path), dtype=dtype, tool_chat_template=True))
        if device is not None:
            model = model.to(device)
        return cls(model, processor, chosen, dimensions, sampling, batch_size)

    def _env(self, prompt: str, video_a: Video, video_b: Video, seed: int) -> VideoPairEnv:
        return VideoPairEnv(prompt, video_a, video_b, self.preset, self.dimensions, seed=seed)

    def compare(self, prompt: str, video_a: Video, video_b: Video) -> JudgeResult:
        """Judge one pair; video_a is shown as Video 1."""
        return self.compare_many([(prompt, video_a, video_b)])[0]

    def compare_many(self, items: Iterable[tuple[str, Video, Video]]) -> list[JudgeResult]:
        """Judge many pairs, ``batch_size`` episodes at a time; pair i samples with seed ``sampling.seed + i``,
        so sampled verdicts do not depend on ``batch_size``."""
        envs = [self._env(prompt, a, b, self.sampling.seed + i) for i, (prompt, a, b) in enumerate(items)]
        results: list[JudgeResult] = []
        for start in range(0, len(envs), self.batch_size):
            batch = envs[start : start + self.batch_size]
            seeds = range(self.sampling.seed + start, self.sampling.seed + start + len(batch))
            for env, trace in zip(batch, self.engine.rollout(batch, self.sampling, seeds=seeds)):
                results.append(JudgeResult(dict(env.verdicts), trace.status, trace, env))
        return results

    def compare_records(self, records: Sequence[PreferenceRecord]) -> list[JudgeResult]:
        """Judge video records (side a = Video 1)."""
        for record in records:
            if record.a.video is None or record.b.video is None:
                raise ValueError(f"record {record.id!r}: the judge needs a video on both sides")
        return self.compare_many([(r.prompt, r.a.video, r.b.video) for r in records])  # type: ignore[misc]


def score_results(results: Sequence[JudgeResult], records: Sequence[PreferenceRecord]) -> JudgeMetrics:
    """Metrics of judge results against their records' labels (same order), by label key."""
    if len(results) != len(records) or not records:
        raise ValueError(f"need one result per record and at least one, got {len(results)} and {len(records)}")
    preset, dimensions = results[0].env.preset, results[0].env.dimensions
    dims = [d for d in dimensions if d.label in records[0].label]
    right = {d.label: 0 for d in dims}
    overall = all_right = 0
    reward = 0.0
    statuses: dict[str, int] = {}
    overall_key = preset.answer.overall_key
    for result, record in zip(results, records):
        label = label_verdicts(record.label, preset, dims)
        overall += result.verdicts.get(overall_key) == label[overall_key]
        for d in dims:
            right[d.label] += result.verdicts.get(d.key) == label.get(d.key)
        all_right += all(result.verdicts.get(k) == v for k, v in label.items())
        reward += accuracy(result.verdicts, label, preset, preset.reward.overall_weight)
        statuses[result.status] = statuses.get(result.status, 0) + 1
    n = len(records)
    return JudgeMetrics(
        pairs=n,
        format_valid_rate=sum(r.format_valid for r in results) / n,
        overall_accuracy=overall / n,
        dimension_accuracy={d.label: right[d.label] / n for d in dims},
        mean_accuracy_reward=reward / n,
        all_right_rate=all_right / n,
        mean_tool_calls=sum(r.num_tool_calls for r in results) / n,
        statuses=statuses,
    )


def evaluate_judge(judge: VRThinkerJudge, records: Sequence[PreferenceRecord]) -> JudgeMetrics:
    """Judge labelled video records and score the verdicts."""
    return score_results(judge.compare_records(records), records)
