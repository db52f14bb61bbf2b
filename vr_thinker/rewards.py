"""Rule rewards of VR-Thinker traces (GRPO) and the rejection-sampling keep rule, as a preset defines them.

Official terms (``reward.variant: official``; experience_maker.py of the official code), for a trace with n tool
calls the tool answered, in a group where ``rapr`` is the share of traces with more than one call::

    accuracy  = [overall verdict right]      (0 when the final turn came right after a tool execution error)
    n >= 1:   curiosity = (rapr - 0.6) * s  if rapr < 0.6 else 0
              calls     = -1 * s (n = 1),  0.5 (n - 1) * s (n = 2, 3),  1.5 * s (n >= 4)
              format    = 1 if every turn was well-formed else 0          (not scaled)
    n = 0:    accuracy only
    s = 1, then 0.2 from training step 30 and 0.1 from step 50 (reward.scale_schedule); image inputs use the
    preset's ``image`` constants (no format term, no schedule).

Paper terms (``reward.variant: paper``; Section 3.2.2 and Appendix A/B.1)::

    total = format + accuracy + cot_gain + eta * exploration
    accuracy    = alpha [overall right] + (1 - alpha) mean_d [d right]                 (alpha = 0.5)
    cot_gain    = k * sum_i (acc(answer_{i+1}) - acc(answer_i)) over the turn answers  (k = 0.2; recommended
                  answers then the final one)
    exploration = max(omega - R, 0) [n >= 1],  R = share of the group with n >= 1        (omega = 0.2, eta = 0.5)

Verdicts and labels are by answer key (``TA``, ``VQ``, ``MQ``, ``OA``): 1 = Video 1 better, 2 = Video 2, 0 = tie
(:func:`vr_thinker.protocol.label_verdicts` converts a record label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vr_thinker.presets import ProtocolPreset


@dataclass(frozen=True)
class TraceOutcome:
    """What the rewards need from one finished trace.

    verdicts: the final answer's verdicts by answer key (empty without a final answer).
    turn_valid: per assistant turn, whether it was well-formed.
    num_tool_calls: calls the tool answered (frames, a notice or an execution error); a call that never ran is
        not counted.
    recommends: per turn, the recommended answer's verdicts (None for a turn without one).
    ended_after_tool_error: the final turn came right after a tool execution error.
    answered: the trace ended with a final answer.
    """

    verdicts: Mapping[str, int]
    turn_valid: Sequence[bool]
    num_tool_calls: int
    recommends: Sequence[Mapping[str, int] | None] = ()
    ended_after_tool_error: bool = False
    answered: bool = False

    @property
    def format_valid(self) -> bool:
        return len(self.turn_valid) > 0 and all(self.turn_valid)


@dataclass(frozen=True)
class RewardTerms:
    """Each reward term of one trace and their total (terms a variant does not use are 0)."""

    accuracy: float
    format: float
    curiosity: float = 0.0
    calls: float = 0.0
    cot_gain: float = 0.0
    exploration: float = 0.0
    total: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _outcome(trace: Any) -> TraceOutcome:
    """A TraceOutcome from itself, a rollout trace or a finished environment."""
    if isinstance(trace, TraceOutcome):
        return trace
    outcome = getattr(trace, "outcome", None)
    outcome = outcome() if callable(outcome) else outcome
    if not isinstance(outcome, TraceOutcome):
        raise TypeError(f"need a TraceOutcome, a RolloutTrace or a VideoPairEnv, got {type(trace).__name__}")
    return outcome


def _label(label: Mapping[str, Any], preset: ProtocolPreset) -> dict[str, int]:
    """Verdicts by answer key: given as such, or converted from a record label ("a"/"b"/"tie")."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in label.values()):
        if preset.answer.overall_key not in label:
            raise ValueError(f"label needs {preset.answer.overall_key!r}, got {dict(label)}")
        return dict(label)
    from vr_thinker.protocol import label_verdicts

    return label_verdicts(label, preset)


def accuracy(verdicts: Mapping[str, int], label: Mapping[str, int], preset: ProtocolPreset,
             overall_weight: float | None = None) -> float:
    """[overall right] (``overall_weight`` None or 1), else ``w [overall right] + (1 - w) mean_d [d right]`` over the
    label's dimension keys (a missing verdict is wrong)."""
    overall_key = preset.answer.overall_key
    overall = float(verdicts.get(overall_key) == label[overall_key])
    dims = [k for k in label if k != overall_key]
    if overall_weight is None or overall_weight >= 1.0 or not dims:
        return overall
    per_dim = sum(float(verdicts.get(d) == label[d]) for d in dims) / len(dims)
    return overall_weight * overall + (1.0 - overall_weight) * per_dim


def _official(outcome: TraceOutcome, label: dict[str, int], group: Sequence[TraceOutcome], preset: ProtocolPreset,
              step: int | None, modality: str) -> RewardTerms:
    terms = preset.reward.video if modality == "video" else preset.reward.image
    acc = 0.0 if outcome.ended_after_tool_error else accuracy(outcome.verdicts, label, preset)
    n = outcome.num_tool_calls
    fmt = float(outcome.format_valid)
    if n < 1:
        return RewardTerms(accuracy=acc, format=fmt, total=acc)
    scale = preset.reward.scale_at(step) if terms.scaled else 1.0
    rapr = sum(o.num_tool_calls > 1 for o in group) / len(group)
    curiosity = ((rapr - terms.curiosity_threshold) * terms.curiosity_weight * scale
                 if rapr < terms.curiosity_threshold else 0.0)
    if n >= terms.many_calls_from:
        calls = terms.many_calls * scale
    elif n <= 1:
        calls = terms.one_call * scale
    else:
        calls = terms.per_extra_call * (n - 1) * scale
    added_format = fmt if terms.add_format else 0.0
    return RewardTerms(accuracy=acc, format=fmt, curiosity=curiosity, calls=calls,
                       total=acc + curiosity + calls + added_format, extra={"rapr": rapr, "scale": scale})


def _paper(outcome: TraceOutcome, label: dict[str, int], group: Sequence[TraceOutcome],
           preset: ProtocolPreset) -> RewardTerms:
    spec = preset.reward
    acc = accuracy(outcome.verdicts, label, preset, spec.overall_weight)
    answers = [r for r in outcome.recommends if r is not None]
    if outcome.verdicts:
        answers.append(outcome.verdicts)
    scores = [accuracy(a, label, preset, spec.overall_weight) for a in answers]
    cot = spec.cot_gain * sum(b - a for a, b in zip(scores, scores[1:]))
    share = sum(o.num_tool_calls >= 1 for o in group) / len(group)
    explore = max(spec.explore_floor - share, 0.0) * float(outcome.num_tool_calls >= 1)
    fmt = float(outcome.format_valid)
    total = fmt + acc + cot + spec.explore_weight * explore
    return RewardTerms(accuracy=acc, format=fmt, cot_gain=cot, exploration=explore, total=total,
                       extra={"multimodal_share": share})


def trace_reward(trace: Any, label: Mapping[str, Any], preset: ProtocolPreset, group: Sequence[Any] = (),
                 step: int | None = None, modality: str = "video", variant: str | None = None) -> RewardTerms:
    """Every reward term of one trace and the total (formulas in the module docstring).

    trace: a TraceOutcome, a rollout trace or a finished VideoPairEnv. label: verdicts by answer key or a record
    label. group: the traces of its rollout group, itself included (default: the trace alone). step: the training
    step (the official scale schedule). modality: ``video`` or ``image`` (the official image constants).
    variant: ``official`` / ``paper`` (default: the preset's).
    """
    outcome = _outcome(trace)
    members = [_outcome(t) for t in group] or [outcome]
    verdict_label = _label(label, preset)
    kind = variant or preset.reward.variant
    if modality not in ("video", "image"):
        raise ValueError(f"modality must be video or image, got {modality!r}")
    if kind == "official":
        return _official(outcome, verdict_label, members, preset, step, modality)
    if kind == "paper":
        return _paper(outcome, verdict_label, members, preset)
    raise ValueError(f"unknown reward variant {kind!r}")


def group_rewards(traces: Sequence[Any], label: Mapping[str, Any], preset: ProtocolPreset,
                  step: int | None = None, variant: str | None = None) -> list[RewardTerms]:
    """Rewards of one rollout group (every trace judged the same pair)."""
    return [trace_reward(t, label, preset, group=traces, step=step, variant=variant) for t in traces]


def keep_for_rejection_sampling(trace: Any, label: Mapping[str, Any], preset: ProtocolPreset) -> bool:
    """Keep a trace only if every turn was well-formed, it ended with a final answer and every dimension and the
    overall verdict are right."""
    outcome = _outcome(trace)
    wanted = _label(label, preset)
    return (outcome.format_valid and outcome.answered
            and all(outcome.verdicts.get(k) == v for k, v in wanted.items()))
