"""A verl custom reward function that scores responses on mmreward reward servers.

verl loads it by path (no install needed beyond mmreward on the workers):

    custom_reward_function.path=examples/verl_reward.py custom_reward_function.name=compute_score
    # one request per batch instead of per sample (the servers batch it with their other traffic):
    reward_model.reward_manager=batch custom_reward_function.name=compute_score_batch
    # servers: reward_kwargs, or $MMREWARD_REWARD_URLS="http://10.0.0.5:5000,http://10.0.0.5:5001"
    +custom_reward_function.reward_kwargs.urls='[http://10.0.0.5:5000,http://10.0.0.5:5001]'

Per sample: the response is `solution_str`; the prompt the reward model scores is
`extra_info["reward_prompt"]`, else `extra_info["prompt"]`, else `ground_truth`; the media are
`extra_info["image"]`, `["images"]` and/or `["video"]` (paths under the servers' media root). The
bearer token comes from $MMREWARD_SERVER_TOKEN. The result is verl's `{"score": ...}` (the reward of
`dimension`, default "overall" or the model's first) with every dimension beside it as `reward_<name>`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Sequence

from mmreward.serve import RemoteReward

URLS_ENV = "MMREWARD_REWARD_URLS"


@lru_cache(maxsize=8)
def _client(urls: tuple[str, ...]) -> RemoteReward:
    return RemoteReward(list(urls))


def _server_urls(urls: str | Sequence[str] | None) -> tuple[str, ...]:
    if urls is None:
        urls = os.environ.get(URLS_ENV, "")
    listed = urls.split(",") if isinstance(urls, str) else list(urls)
    listed = [u.strip() for u in listed if u.strip()]
    if not listed:
        raise ValueError(f"no reward server: pass reward_kwargs.urls or set ${URLS_ENV}")
    return tuple(listed)


def _item(client: RemoteReward, solution_str: str, ground_truth: Any, extra_info: dict | None) -> dict[str, Any]:
    info = extra_info or {}
    prompt = info.get("reward_prompt") or info.get("prompt") or ground_truth
    if not isinstance(prompt, str):
        raise ValueError(f"no prompt to score against: extra_info has no reward_prompt / prompt and ground_truth is "
                         f"{type(prompt).__name__}")
    images = ([info["image"]] if info.get("image") is not None else []) + list(info.get("images") or [])
    return client.item(prompt, solution_str, images=images or None, video=info.get("video"))


def _score(rewards: dict[str, float], dimension: str | None) -> dict[str, float]:
    chosen = dimension or ("overall" if "overall" in rewards else next(iter(rewards)))
    return {"score": rewards[chosen], **{f"reward_{name}": value for name, value in rewards.items()}}


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  urls: str | Sequence[str] | None = None, dimension: str | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl's per-sample reward function (naive reward manager)."""
    client = _client(_server_urls(urls))
    return _score(client.reward_items([_item(client, solution_str, ground_truth, extra_info)])[0], dimension)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None], urls: str | Sequence[str] | None = None,
                        dimension: str | None = None, **kwargs: Any) -> list[dict[str, float]]:
    """verl's batch reward function (`reward_model.reward_manager=batch`): the whole batch in few requests."""
    client = _client(_server_urls(urls))
    items = [_item(client, s, g, e) for s, g, e in zip(solution_strs, ground_truths, extra_infos)]
    return [_score(rewards, dimension) for rewards in client.reward_items(items)]
