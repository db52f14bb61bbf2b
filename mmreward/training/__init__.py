"""Reward-model training: configs, deterministic data schedule and the accelerate trainer loop."""

from mmreward.training.config import RewardDataArguments, RewardModelArguments, RewardTrainingConfig
from mmreward.training.trainer import NonFiniteLossError, RewardTrainer, latest_checkpoint

__all__ = [
    "RewardDataArguments",
    "RewardModelArguments",
    "RewardTrainingConfig",
    "RewardTrainer",
    "NonFiniteLossError",
    "latest_checkpoint",
]
