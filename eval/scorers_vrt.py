"""VR-Thinker as a pairwise judge for eval/preference.py (`--judge vr_thinker --model DIR`).

The library only knows the `PairJudge` protocol; this adapter connects it to
`vr_thinker.judge.VRThinkerJudge`. A stage output directory carries its protocol preset; a released
checkpoint (qunwang13/vr-thinker, qunwang13/vrthinker) is judged with `--judge_preset vr-thinker` /
`vrthinker`, and `--judge_dimensions` picks the preset's dimension set whose label keys match the
benchmark (e.g. `mjbench_video`: Alignment / Fineness / Coherence & Consistency). A runner batch is
judged with `compare_many` (up to `--batch_size` episodes together). Verdicts are reported by record
label key; a label key the model gave no verdict for is None (scored as delta 0, counted as
unanswered). Each row keeps a compact trace: episode status, whether every turn was well-formed, the
frames shown per tool call, the text of each turn and the generated token count. Both candidates
must be videos; a pair that is not gets a recorded `SampleError`.
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
        self.dimensions = [*(d.label for d in model.dimensions), OVERALL]

    def judge(self, records: Sequence[PreferenceRecord]) -> list[JudgeVerdict]:
        for record in records:
            if record.a.video is None or record.b.video is None:
                raise SampleError(f"record {record.id!r}: VR-Thinker compares two videos; a side has no video")
        results = self.model.compare_many([(r.prompt, r.a.video, r.b.video) for r in records])
        verdicts = []
        for record, result in zip(records, results):
            by_label = _by_label(result)
            # Dimensions the benchmark does not label (GenAI-Bench: overall only) are left out.
            judged = [dim for dim in self.dimensions if dim == OVERALL or dim in record.label]
            verdicts.append(JudgeVerdict(verdicts={dim: by_label.get(dim) for dim in judged},
                                         trace=compact_trace(result) if self.keep_trace else None))
        return verdicts


def _by_label(result: Any) -> dict[str, int]:
    """The result's verdicts (1 / 2 / 0) by record label key."""
    dims = result.env.dimensions
    names = {d.key: d.label for d in dims} | {result.env.preset.answer.overall_key: OVERALL}
    return {names[k]: v for k, v in result.verdicts.items() if k in names}


def build_scorer(args: Any, device: Any) -> JudgeScorer:
    """Factory used by eval/preference.py: load the judge from `args.model` onto `device`."""
    from vr_thinker.judge import VRThinkerJudge

    judge = VRThinkerJudge.from_pretrained(args.model, dtype=args.dtype, device=device, batch_size=args.batch_size,
                                           preset=getattr(args, "judge_preset", None),
                                           dimensions=getattr(args, "judge_dimensions", None))
    name = "vr_thinker" + (f" ({judge.preset.name})" if getattr(args, "judge_preset", None) else "")
    return JudgeScorer(VRThinkerPairJudge(judge), name=name, source=str(args.model))
