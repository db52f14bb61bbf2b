"""The VR-Thinker judge: a trained model directory plus the tool loop, comparing two videos for a prompt.

    judge = VRThinkerJudge.from_pretrained("runs/vrt_sft")
    result = judge.compare("two red circles", "a.mp4", "b.mp4")
    result.verdicts         # {"VQ": 1, "MQ": 0, "TA": 2, "overall": 2}; 1 = video_a, 2 = video_b, 0 = tie
    result.preference()     # "b" (record label convention)
    result.html()           # the trace: each turn's reasoning and the frames the model looked at

A model directory written by a VR-Thinker stage holds ``vr_thinker.json`` with the environment settings and
dimensions the model was trained with; the judge uses them unless told otherwise. Generation runs through the
rollout engine (:class:`~vr_thinker.rollout.HFRolloutEngine`: batched, KV cache kept across turns), greedy by default.
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
from vr_thinker.env import EnvConfig, EpisodeStatus, VideoPairEnv
from vr_thinker.protocol import DEFAULT_DIMENSIONS, OVERALL, DimensionsLike, normalize_dimensions, verdicts_from_label
from vr_thinker.rewards import accuracy_reward, format_reward
from vr_thinker.rollout import HFRolloutEngine, RolloutTrace, SamplingConfig

JUDGE_CONFIG_NAME = "vr_thinker.json"
_PREFERENCE = {1: "a", 2: "b", 0: "tie"}
Video = str | Path | VideoClip


def save_judge_config(model_dir: str | Path, env: EnvConfig, dimensions: DimensionsLike) -> Path:
    """Record the episode settings a model was trained with next to its weights."""
    path = Path(model_dir) / JUDGE_CONFIG_NAME
    payload = {"env": asdict(env), "dimensions": normalize_dimensions(dimensions)}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_judge_config(model_dir: str | Path) -> tuple[EnvConfig, dict[str, str]] | None:
    """(env settings, dimensions) saved with a model, or None when the directory has no judge config."""
    path = Path(model_dir) / JUDGE_CONFIG_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return EnvConfig(**payload["env"]), normalize_dimensions(payload["dimensions"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid judge config ({err})") from err


@dataclass
class JudgeResult:
    """Verdicts (dimension name or "overall" -> 1|2|0, 1 = video_a), the episode status, the generation record
    (``trace``: ids, texts, timings per turn) and the finished environment (``env``: messages, frames shown, parses)."""

    verdicts: dict[str, int]
    status: str
    trace: RolloutTrace
    env: VideoPairEnv

    @property
    def format_valid(self) -> bool:
        """Every turn parsed and was accepted, and the episode ended with an answer (the format reward is 1)."""
        return self.status == EpisodeStatus.ANSWERED.value and format_reward(self.trace.outcome.turn_valid) == 1.0

    @property
    def num_tool_calls(self) -> int:
        return self.trace.outcome.num_tool_calls

    def preference(self, dimension: str = OVERALL) -> str | None:
        """"a" / "b" / "tie" for a dimension, None when the model gave no verdict for it."""
        verdict = self.verdicts.get(dimension)
        return None if verdict is None else _PREFERENCE[verdict]

    def html(self, title: str = "", label: Mapping[str, str] | None = None) -> str:
        from vr_thinker.trace_html import render_trace_html

        return render_trace_html(self.env, title=title, label=label)


@dataclass
class JudgeMetrics:
    """Scores of a judge on labelled pairs. Accuracies count ties as a third class; a missing verdict is wrong.

    format_valid_rate: share of episodes whose every turn was valid and that ended with an answer.
    overall_accuracy: share with the right overall verdict. dimension_accuracy: per dimension.
    mean_accuracy_reward: mean of the GRPO accuracy reward (half overall, half mean over dimensions).
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
    """Compare two videos with a VR-Thinker model. ``env_config`` and ``dimensions`` must match training."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        env_config: EnvConfig = EnvConfig(),
        dimensions: DimensionsLike = DEFAULT_DIMENSIONS,
        sampling: SamplingConfig = SamplingConfig(do_sample=False, max_new_tokens=512),
        batch_size: int = 8,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.env_config = env_config
        self.dimensions = normalize_dimensions(dimensions)
        self.sampling = sampling
        self.batch_size = batch_size
        self.engine = HFRolloutEngine(model, processor)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: str = "auto",
        device: str | torch.device | None = None,
        env_config: EnvConfig | None = None,
        dimensions: DimensionsLike | None = None,
        sampling: SamplingConfig = SamplingConfig(do_sample=False, max_new_tokens=512),
        batch_size: int = 8,
    ) -> VRThinkerJudge:
        """Load a model directory (a stage output or any Qwen-VL checkpoint with ``env_config``/``dimensions``
        given). The tool-capable chat template is installed when the checkpoint's template drops tool calls."""
        saved = load_judge_config(path)
        if saved is None and env_config is None:
            raise ValueError(f"{path}: no {JUDGE_CONFIG_NAME}; pass env_config (and dimensions) explicitly")
        model, processor = load_vlm(VLMLoadConfig(path=str(path), dtype=dtype, tool_chat_template=True))
        if device is not None:
            model = model.to(device)
        env = env_config if env_config is not None else saved[0]  # type: ignore[index]
        dims = dimensions if dimensions is not None else (saved[1] if saved is not None else DEFAULT_DIMENSIONS)
        return cls(model, processor, env, dims, sampling, batch_size)

    def _env(self, prompt: str, video_a: Video, video_b: Video) -> VideoPairEnv:
        return VideoPairEnv(prompt, video_a, video_b, self.dimensions, self.env_config)

    def compare(self, prompt: str, video_a: Video, video_b: Video) -> JudgeResult:
        """Judge one pair; video_a is shown as Video 1."""
        return self.compare_many([(prompt, video_a, video_b)])[0]

    def compare_many(self, items: Iterable[tuple[str, Video, Video]]) -> list[JudgeResult]:
        """Judge many pairs, ``batch_size`` episodes at a time; pair i samples with seed ``sampling.seed + i``,
        so sampled verdicts do not depend on ``batch_size``."""
        envs = [self._env(prompt, a, b) for prompt, a, b in items]
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
    """Metrics of judge results against their records' labels (same order)."""
    if len(results) != len(records) or not records:
        raise ValueError(f"need one result per record and at least one, got {len(results)} and {len(records)}")
    dims = [k for k in records[0].label if k != OVERALL]
    right = {d: 0 for d in dims}
    overall = all_right = 0
    reward = 0.0
    statuses: dict[str, int] = {}
    for result, record in zip(results, records):
        label = verdicts_from_label(record.label)
        overall += result.verdicts.get(OVERALL) == label[OVERALL]
        for d in dims:
            right[d] += result.verdicts.get(d) == label.get(d)
        all_right += all(result.verdicts.get(k) == v for k, v in label.items())
        reward += accuracy_reward(result.verdicts, label)
        statuses[result.status] = statuses.get(result.status, 0) + 1
    n = len(records)
    return JudgeMetrics(
        pairs=n,
        format_valid_rate=sum(r.format_valid for r in results) / n,
        overall_accuracy=overall / n,
        dimension_accuracy={d: right[d] / n for d in dims},
        mean_accuracy_reward=reward / n,
        all_right_rate=all_right / n,
        mean_tool_calls=sum(r.num_tool_calls for r in results) / n,
        statuses=statuses,
    )


def evaluate_judge(judge: VRThinkerJudge, records: Sequence[PreferenceRecord]) -> JudgeMetrics:
    """Judge labelled video records and score the verdicts."""
    return score_results(judge.compare_records(records), records)
