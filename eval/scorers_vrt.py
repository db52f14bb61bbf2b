"""VR-Thinker as a pairwise judge for eval/preference.py (`--judge vr_thinker --model DIR`).

The library only knows the `PairJudge` protocol; this adapter connects it to
`vr_thinker.judge.VRThinkerJudge`. A runner batch is judged with `compare_many` (the judge's
rollout engine runs up to `--batch_size` episodes together). A dimension the model gave no
verdict for is None (scored as delta 0, counted as unanswered). Each row keeps a compact trace:
episode status, whether every turn was well-formed, the frames asked for per tool call, the text
of each turn and the generated token count. Both candidates must be videos; a pair that is not
gets a recorded `SampleError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmreward.data.records import PreferenceRecord
from mmreward.evaluation.scorers import JudgeScorer, JudgeVerdict, SampleError

OVERALL = "overall"


def compact_trace(result: Any) -> dict[str, Any]:
    """JSON-ready summary of a `vr_thinker.judge.JudgeResult` (the full trace holds token ids and images)."""
    trace = result.trace
    return {
        "status": result.status,
        "format_valid": bool(result.format_valid),
        "tool_calls": [list(map(int, frames)) for frames in trace.tool_calls],
        "turns": [turn.text for turn in trace.turns],
        "generated_tokens": int(trace.num_generated_tokens),
    }


class VRThinkerPairJudge:
    """`PairJudge` over a loaded `VRThinkerJudge` (side a is shown as Video 1)."""

    def __init__(self, model: Any, keep_trace: bool = True):
        self.model = model  # the VRThinkerJudge
        self.keep_trace = keep_trace
        self.dimensions = [*model.dimensions, OVERALL]

    def judge(self, records: Sequence[PreferenceRecord]) -> list[JudgeVerdict]:
        for record in records:
            if record.a.video is None or record.b.video is None:
                raise SampleError(f"record {record.id!r}: VR-Thinker compares two videos; a side has no video")
        results = self.model.compare_many([(r.prompt, r.a.video, r.b.video) for r in records])
        return [
            JudgeVerdict(verdicts={dim: result.verdicts.get(dim) for dim in self.dimensions},
                         trace=compact_trace(result) if self.keep_trace else None)
            for result in results
        ]


def build_scorer(args: Any, device: Any) -> JudgeScorer:
    """Factory used by eval/preference.py: load the judge from `args.model` onto `device`."""
    from vr_thinker.judge import VRThinkerJudge

    judge = VRThinkerJudge.from_pretrained(args.model, dtype=args.dtype, device=device, batch_size=args.batch_size)
    return JudgeScorer(VRThinkerPairJudge(judge), name="vr_thinker", source=str(args.model))
