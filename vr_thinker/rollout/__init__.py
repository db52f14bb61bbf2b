"""Batched multi-turn rollouts of the VR-Thinker tool loop.

- :mod:`~vr_thinker.rollout.loop`: the loop every backend shares (sampling settings, per-turn traces, seeds).
- :mod:`~vr_thinker.rollout.context`: contexts as token ids that keep earlier turns as their generated ids.
- :mod:`~vr_thinker.rollout.hf_engine`: Hugging Face backend with a KV cache kept across turns.
- :mod:`~vr_thinker.rollout.vllm_engine`: vLLM backend (GPU; vLLM is imported when the engine is built).
"""

from vr_thinker.rollout.context import ConversationBuilder, RolloutError
from vr_thinker.rollout.hf_engine import HFRolloutEngine
from vr_thinker.rollout.loop import RolloutEngine, RolloutTrace, SamplingConfig, TurnTrace, episode_seed
from vr_thinker.rollout.vllm_engine import VLLMRolloutEngine

__all__ = [
    "ConversationBuilder",
    "HFRolloutEngine",
    "RolloutEngine",
    "RolloutError",
    "RolloutTrace",
    "SamplingConfig",
    "TurnTrace",
    "VLLMRolloutEngine",
    "episode_seed",
]
