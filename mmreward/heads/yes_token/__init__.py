"""RewardDance's `yes_token` head: settings (`config`), prompts and read positions (`prompts`), the
head and its loss (`head`), and batched scoring / TRL reward functions for its users (`scoring`)."""

from mmreward.heads.yes_token.config import YesTokenConfig
from mmreward.heads.yes_token.head import YesTokenHead, verdict_log_odds, yes_token_loss

__all__ = ["YesTokenConfig", "YesTokenHead", "verdict_log_odds", "yes_token_loss"]
