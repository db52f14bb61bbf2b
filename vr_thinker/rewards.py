"""Rule rewards for VR-Thinker traces (GRPO) and the rejection-sampling keep rule.

Verdicts and labels use the protocol's values (1 = Video 1 better, 2 = Video 2 better, 0 = tie) keyed by
dimension name plus "overall" (see :func:`vr_thinker.protocol.verdicts_from_label`).

    r_acc = w * [overall right] + (1 - w) * mean_d [dimension d right]      (a missing verdict is wrong)
    r_fmt = 1 if the trace has at least one assistant turn and every turn is valid, else 0
    r_exp = a * max(H - u, 0) * [n >= 1] - b * max(n - N, 0)
            u = share of traces in the rollout group with n >= 1, n = this trace's tool calls
    r     = r_acc + c_fmt * r_fmt + r_exp

The exploration term follows Pixel Reasoner's curiosity reward: tool use is rewarded while the group rarely uses
the tool (u < H), and calls beyond N are penalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vr_thinker.protocol import OVERALL


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the VR-Thinker rule rewards.

    overall_weight: w, share of the accuracy reward given to the overall verdict (rest: mean over dimensions).
    format_coef: c_fmt, weight of the format reward in the total.
    curiosity_coef: a, size of the bonus for calling the tool while the group rarely does.
    curiosity_target: H, group tool-use rate below which tool calls earn the bonus.
    call_penalty: b, penalty per tool call beyond ``max_free_calls``.
    max_free_calls: N, tool calls allowed without penalty.
    """

    overall_weight: float = 0.5
    format_coef: float = 0.5
    curiosity_coef: float = 0.5
    curiosity_target: float = 0.3
    call_penalty: float = 0.05
    max_free_calls: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.overall_weight <= 1.0:
            raise ValueError(f"overall_weight must be in [0, 1], got {self.overall_weight}")
        if self.max_free_calls < 0:
            raise ValueError(f"max_free_calls must be >= 0, got {self.max_free_calls}")


@dataclass(frozen=True)
class TraceOutcome:
    """What the rewards need from one finished trace.

    verdicts: final verdicts read from the trace (may be partial or empty).
    turn_valid: one flag per assistant turn: it parsed and the environment accepted it (see ``VideoPairEnv``).
    num_tool_calls: well-formed ``select_frames`` calls, including one refused for exceeding the budget.
    """

    verdicts: Mapping[str, int]
    turn_valid: Sequence[bool]
    num_tool_calls: int


@dataclass(frozen=True)
class RewardBreakdown:
    accuracy: float
    format: float
    exploration: float
    total: float


def _dimensions_of(label: Mapping[str, int]) -> list[str]:
    if OVERALL not in label:
        raise ValueError(f"label must contain {OVERALL!r}, got keys {sorted(label)}")
    return [k for k in label if k != OVERALL]


def accuracy_reward(verdicts: Mapping[str, int], label: Mapping[str, int], overall_weight: float = 0.5) -> float:
    """w * [overall right] + (1 - w) * mean over the label's dimensions of [right].

    With no dimensions besides "overall", the reward is [overall right] (the mean is undefined).
    """
    dims = _dimensions_of(label)
    overall = float(verdicts.get(OVERALL) == label[OVERALL])
    if not dims:
        return overall
    per_dim = sum(float(verdicts.get(d) == label[d]) for d in dims) / len(dims)
    return overall_weight * overall + (1.0 - overall_weight) * per_dim


def format_reward(turn_valid: Sequence[bool]) -> float:
    return float(len(turn_valid) > 0 and all(turn_valid))


def exploration_rewards(num_tool_calls: Sequence[int], config: RewardConfig = RewardConfig()) -> list[float]:
    """Exploration reward of every trace in one rollout group (u is the group's tool-use share)."""
    if not num_tool_calls:
        return []
    u = sum(n >= 1 for n in num_tool_calls) / len(num_tool_calls)
    bonus = config.curiosity_coef * max(config.curiosity_target - u, 0.0)
    return [
        bonus * float(n >= 1) - config.call_penalty * max(n - config.max_free_calls, 0) for n in num_tool_calls
    ]


def group_rewards(
    outcomes: Sequence[TraceOutcome],
    labels: Sequence[Mapping[str, int]] | Mapping[str, int],
    config: RewardConfig = RewardConfig(),
) -> list[RewardBreakdown]:
    """Rewards of one rollout group. ``labels`` is one label for the whole group (same pair) or one per trace."""
    if isinstance(labels, Mapping):
        labels = [labels] * len(outcomes)
    if len(labels) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes but {len(labels)} labels")
    exploration = exploration_rewards([o.num_tool_calls for o in outcomes], config)
    out = []
    for outcome, label, r_exp in zip(outcomes, labels, exploration):
        r_acc = accuracy_reward(outcome.verdicts, label, config.overall_weight)
        r_fmt = format_reward(outcome.turn_valid)
        out.append(RewardBreakdown(r_acc, r_fmt, r_exp, r_acc + config.format_coef * r_fmt + r_exp))
    return out


def keep_for_rejection_sampling(outcome: TraceOutcome, label: Mapping[str, int]) -> bool:
    """Keep a trace only if its format is valid and every dimension and the overall verdict are right."""
    dims = _dimensions_of(label)
    return format_reward(outcome.turn_valid) == 1.0 and all(
        outcome.verdicts.get(k) == label[k] for k in [*dims, OVERALL]
    )
