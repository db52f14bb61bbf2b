"""Settings of a reward server; `python -m mmreward.serve` maps its flags onto these one to one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "MMREWARD_SERVER_TOKEN"  # where the server (and RemoteReward) read the bearer token by default


@dataclass
class ServerConfig:
    """How a reward server loads its model, accepts requests and batches them.

    model: reward model checkpoint directory (mmreward or VideoAlign layout).
    backbone: base backbone for LoRA / head-only / VideoAlign checkpoints (default: the recorded path).
    dtype: float32 | bfloat16 | float16 | auto (the checkpoint's).
    device: e.g. "cuda:0" (default: cuda if available, else cpu).
    host: the address to listen on. 127.0.0.1 keeps the server on this machine; anything else exposes it
        (then set a token).
    port: TCP port (0: a free one, printed when the server starts listening).
    media_root: the folder that media paths in requests are resolved in; the server opens no file
        outside it. None: path items are refused and media must be uploaded as bytes.
    max_batch: most items scored in one forward (1: dynamic batching off, every item on its own).
    max_wait_ms: how long the first item of a batch waits for more to arrive (0: take what is queued).
    max_queue: most items accepted and not yet scored; a request that would exceed it gets 503 with
        Retry-After. Also the most items one request may hold.
    retry_after_s: the Retry-After a 503 carries.
    token: bearer token every endpoint but /health requires (None: no authentication).
    dimension: the reward /get_reward returns as OpenRLHF's "rewards" (default: "overall" when the model
        reports it, else its first dimension).
    normalize: report z-normalised rewards by default (None: as the checkpoint says); a /reward request
        may ask otherwise.
    max_body_mb: largest request body accepted (uploaded media travel base64-encoded inside it).
    journal: JSONL file of answered requests (by Idempotency-Key); a restarted server reads it, so a
        request retried across a restart is answered from it instead of being scored again.
    remembered_answers: how many answered Idempotency-Keys are kept in memory.
    drain_timeout_s: on SIGTERM, how long in-flight requests may take before they are cancelled.
    """

    model: str
    backbone: str | None = None
    dtype: str = "auto"
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    media_root: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 1024
    retry_after_s: int = 1
    token: str | None = None
    dimension: str | None = None
    normalize: bool | None = None
    max_body_mb: float = 64.0
    journal: str | None = None
    remembered_answers: int = 100_000
    drain_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_mb <= 0:
            raise ValueError(f"max_body_mb must be positive, got {self.max_body_mb}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty (leave it unset for no authentication)")
        if self.media_root is not None and not Path(self.media_root).is_dir():
            raise ValueError(f"media_root {self.media_root}: not a directory")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def is_loopback(self) -> bool:
        """Whether `host` keeps the server on this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume it is reachable from elsewhere
            return False
