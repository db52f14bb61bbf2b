"""`RemoteReward`: reward servers as a TRL reward function, with retries, timeouts and failover.

    reward = RemoteReward(["http://10.0.0.5:5000", "http://10.0.0.5:5001"])
    GRPOTrainer(..., reward_funcs=[reward])            # fn(prompts, completions, **columns) -> list[float]

It takes the same call as the in-process `mmreward.reward_fn.RewardFunction`: prompts and completions
(strings or chat messages) and the dataset's `images` / `image` (PIL images or paths, a list per
example) and `videos` / `video` (paths) columns. A batch is cut into requests of `batch_size` items, spread
over the servers and sent concurrently. Each request carries an `Idempotency-Key` that its retries
reuse, so a retry after a lost response, a timeout or a server restart is answered once (from the
server's answer book / journal) and never scored twice; every completion gets exactly one reward, in order.
Connection errors, timeouts, 500, 502, 503 and 504 are retried (503's Retry-After honoured; otherwise
exponential backoff), moving to the next server; 400 (bad items, named), 401 and 409 are not.

Paths are sent as they are: they must lie under the server's media root (relative to it, or absolute
on a shared file system). `upload=True` sends the files' bytes instead; PIL images are always uploaded
(PNG, lossless) and decoded by the server as image files are, i.e. resized once to the processor's
size, where the in-process `RewardFunction` lets the processor resize them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import httpx
from PIL import Image

from mmreward.reward_fn import completion_text, media_columns, prompt_text
from mmreward.serve.config import TOKEN_ENV

RETRIED_STATUSES = (500, 502, 503, 504)


class RemoteRewardError(RuntimeError):
    """A batch the reward servers would not or could not score (the message names items and servers)."""


class RemoteReward:
    """Score completions on reward servers, one float per completion (or every dimension: `reward_items`).

    urls: one server URL or several (requests are spread over them; a failed try moves to the next).
    dimension: which reward `__call__` returns (default: "overall" if reported, else the first).
    token: bearer token (default: $MMREWARD_SERVER_TOKEN, if set).
    upload: send media files' bytes instead of their paths (a server on another machine, no media root).
    normalize: ask for z-normalised (True) or raw (False) rewards; None: the server's default.
    timeout: seconds one try may take. retries: tries after the first. backoff_s / max_backoff_s: the
        wait before the first retry, doubled each time up to the maximum.
    batch_size: items per request.
    """

    def __init__(self, urls: str | Sequence[str], dimension: str | None = None, token: str | None = None,
                 upload: bool = False, normalize: bool | None = None, timeout: float = 120.0, retries: int = 8,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0, batch_size: int = 64):
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:
            raise ValueError("RemoteReward needs at least one server URL")
        if batch_size < 1 or retries < 0:
            raise ValueError(f"batch_size must be >= 1 and retries >= 0, got {batch_size} and {retries}")
        self.dimension = dimension
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.upload, self.normalize = upload, normalize
        self.timeout, self.retries, self.backoff_s, self.max_backoff_s = timeout, retries, backoff_s, max_backoff_s
        self.batch_size = batch_size
        self.__name__ = f"remote_reward_{dimension or 'overall'}"  # TRL names reward columns after it
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    # Trainers may copy or pickle reward functions; the connection pool is rebuilt on first use.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _client=None, _lock=threading.Lock())

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------------------ items

    def media_ref(self, value: Any) -> str | dict[str, str]:
        """A media value as a request sends it: a path string, or {"base64": ...} for bytes and images."""
        if isinstance(value, Image.Image):
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            return {"base64": base64.b64encode(buffer.getvalue()).decode()}
        if isinstance(value, (str, Path)):
            if self.upload:
                return {"base64": base64.b64encode(Path(value).read_bytes()).decode()}
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            return {"base64": base64.b64encode(bytes(value)).decode()}
        raise TypeError(f"cannot send a {type(value).__name__} as media (a path, bytes or a PIL image)")

    def item(self, prompt: str, response: str | None = None, images: Any = None, video: Any = None) -> dict[str, Any]:
        """One /reward item (see `mmreward.serve.schema`)."""
        item: dict[str, Any] = {"prompt": prompt}
        if response is not None:
            item["response"] = response
        if images is not None:
            listed = [images] if isinstance(images, (Image.Image, str, Path, bytes)) else list(images)
            item["images"] = [self.media_ref(image) for image in listed]
        if video is not None:
            item["video"] = self.media_ref(video)
        return item

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        images, videos = media_columns(prompts, completions, kwargs)
        items = [self.item(prompt_text(p), completion_text(c), images[i], videos[i])
                 for i, (p, c) in enumerate(zip(prompts, completions))]
        rewards = self.reward_items(items)
        if not rewards:
            return []
        dimension = self.dimension or ("overall" if "overall" in rewards[0] else next(iter(rewards[0])))
        if dimension not in rewards[0]:
            raise RemoteRewardError(f"dimension {dimension!r} not among the server's {list(rewards[0])}")
        return [r[dimension] for r in rewards]

    # ------------------------------------------------------------------------------ requests

    def reward_items(self, items: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """Every dimension's reward per item, in order (requests of `batch_size` items, spread over the servers)."""
        parts = [(start, list(items[start:start + self.batch_size])) for start in range(0, len(items), self.batch_size)]
        if len(parts) <= 1:
            return [r for start, part in parts for r in self._post(part, start, 0)]
        with ThreadPoolExecutor(max_workers=min(len(parts), 4 * len(self.urls))) as pool:
            answers = pool.map(lambda k: self._post(parts[k][1], parts[k][0], k), range(len(parts)))
            return [r for answer in answers for r in answer]

    def _headers(self, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _wait(self, attempt: int, response: httpx.Response | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        retry_after = response.headers.get("retry-after", "") if response is not None else ""
        time.sleep(float(retry_after) if retry_after.isdigit() else delay)

    def _post(self, items: list[dict[str, Any]], offset: int, first_server: int) -> list[dict[str, float]]:
        """One request's rewards; tried up to 1 + retries times under one Idempotency-Key."""
        key = uuid.uuid4().hex
        body = json.dumps({"items": items, "normalize": self.normalize}).encode()
        headers = self._headers(key)
        last = ""
        for attempt in range(self.retries + 1):
            url = f"{self.urls[(first_server + attempt) % len(self.urls)]}/reward"
            response = None
            try:
                response = self._http().post(url, content=body, headers=headers)
            except httpx.TransportError as err:  # refused, reset, timed out: the server may be restarting
                last = f"{url}: {type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return self._rewards(response, url, len(items))
                last = f"{url} answered {response.status_code}: {_error_of(response, offset)}"
                if response.status_code not in RETRIED_STATUSES:
                    raise RemoteRewardError(last)
            if attempt < self.retries:
                self._wait(attempt, response)
        raise RemoteRewardError(f"items {offset}..{offset + len(items) - 1}: no answer after {self.retries + 1} tries; "
                                f"last: {last}")

    @staticmethod
    def _rewards(response: httpx.Response, url: str, count: int) -> list[dict[str, float]]:
        rewards = response.json().get("rewards")
        if not isinstance(rewards, list) or len(rewards) != count:
            raise RemoteRewardError(f"{url}: expected {count} rewards, got {str(rewards)[:200]}")
        return rewards


def _error_of(response: httpx.Response, offset: int) -> str:
    """The server's error, with item indices counted from the start of the whole batch."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return str(body.get("error", body) if isinstance(body, dict) else body)[:500]
    named = [f"item {e['index'] + offset} ({e['field']})" if e.get("index") is not None else str(e.get("field"))
             for e in errors]
    return "; ".join(f"{name}: {e.get('message')}" for name, e in zip(named, errors))
