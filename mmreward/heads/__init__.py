"""Reward heads: one registry shared by every reward model built on a VLM backbone.

`base` holds the contract (`RewardHead`) and the registry; each head lives in its own module and
registers itself on import: `scalar` (BaseReward), `yes_token` (RewardDance), `reward_token`
(VideoAlign's VideoReward). Importing this package makes every name buildable.
"""

from mmreward.heads.base import HEADS, HeadError, RewardHead, build_head, head_from_config, register_head
from mmreward.heads.reward_token import RewardTokenHead
from mmreward.heads.scalar import ScalarHead
from mmreward.heads.yes_token import YesTokenConfig, YesTokenHead

__all__ = [
    "HEADS", "HeadError", "RewardHead", "build_head", "head_from_config", "register_head",
    "ScalarHead", "YesTokenHead", "YesTokenConfig", "RewardTokenHead",
]
