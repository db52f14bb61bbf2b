"""Preference evaluation: scorers (reward models, judges, CLIP), a resumable data-parallel runner,
metrics and reports. Scripts: eval/preference.py, eval/compare.py, eval/master_key.py."""

from mmreward.evaluation.report import compute_metrics, summary_markdown, tie_threshold_curve, write_report
from mmreward.evaluation.runner import (
    RunConfigError,
    RunnerConfig,
    RunStats,
    consolidate,
    load_predictions,
    make_batches,
    run_predictions,
)
from mmreward.evaluation.scorers import (
    RECOVERABLE_ERRORS,
    BaseScorer,
    ClipScorer,
    JudgeScorer,
    JudgeVerdict,
    MediaConfig,
    load_pair_media,
    PairJudge,
    PairScore,
    RewardModelScorer,
    SampleError,
    Scorer,
    swap_record,
    verdict_to_delta,
)

__all__ = [
    "BaseScorer", "ClipScorer", "JudgeScorer", "JudgeVerdict", "MediaConfig", "load_pair_media", "PairJudge", "PairScore",
    "RECOVERABLE_ERRORS", "RewardModelScorer", "SampleError", "Scorer", "swap_record", "verdict_to_delta",
    "RunConfigError", "RunnerConfig", "RunStats", "consolidate", "load_predictions", "make_batches",
    "run_predictions", "compute_metrics", "summary_markdown", "tie_threshold_curve", "write_report",
]
