"""VR-Thinker as a pairwise judge for eval/preference.py (`--judge vr_thinker --model DIR`).

The library only knows the `PairJudge` protocol; this adapter connects it to
`vr_thinker.judge.VRThinkerJudge` (`from_pretrained(dir)`, `compare(prompt, video_a, video_b)`
returning an object with `verdicts` (dimension -> 1 / 2 / 0, None when unanswered) and `trace`).
Both candidates must be videos; a pair that is not gets a recorded `SampleError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from mmreward.data.records import PreferenceRecord
from mmreward.evaluation.scorers import JudgeScorer, JudgeVerdict, SampleError


def _jsonable(trace: Any) -> Any:
    """The trace as plain JSON data (dataclasses expanded, anything else as text)."""
    if trace is None:
        return None
    if hasattr(trace, "to_dict"):
        trace = trace.to_dict()
    elif dataclasses.is_dataclass(trace):
        trace = dataclasses.asdict(trace)
    return json.loads(json.dumps(trace, default=str))


class VRThinkerPairJudge:
    """`PairJudge` over a loaded `VRThinkerJudge` (one multi-turn rollout per pair)."""

    def __init__(self, model: Any, keep_trace: bool = True):
        self.model = model  # the VRThinkerJudge
        self.keep_trace = keep_trace

    def judge(self, records: Sequence[PreferenceRecord]) -> list[JudgeVerdict]:
        out = []
        for record in records:
            if record.a.video is None or record.b.video is None:
                raise SampleError(f"record {record.id!r}: VR-Thinker compares two videos; a side has no video")
            result = self.model.compare(record.prompt, record.a.video, record.b.video)
            out.append(JudgeVerdict(verdicts=dict(result.verdicts),
                                    trace=_jsonable(result.trace) if self.keep_trace else None))
        return out


def build_scorer(args: Any, device: Any) -> JudgeScorer:
    """Factory used by eval/preference.py: load the judge from `args.model` onto `device`."""
    from vr_thinker.judge import VRThinkerJudge

    judge = VRThinkerJudge.from_pretrained(args.model)
    return JudgeScorer(VRThinkerPairJudge(judge), name="vr_thinker", source=str(args.model))
