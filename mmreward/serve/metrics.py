"""Counters and recent timings of a reward server, reported by `GET /metrics` as JSON."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Iterable

import numpy as np

PERCENTILES = (50, 90, 99)


def percentiles_ms(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50 / p90 / p99 of durations in milliseconds (None when there are none yet)."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if values.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(values, p)), 3) for p in PERCENTILES}


class ServerMetrics:
    """What the server did since it started. Request latencies and batch times (encoding + model) keep the
    last `window` values."""

    def __init__(self, window: int = 4096):
        self.started = time.time()
        self.responses: Counter[str] = Counter()  # "POST /reward 200" -> count
        self.items_scored = 0
        self.items_failed = 0
        self.rejected_queue_full = 0
        self.replayed = 0  # answers sent again for a repeated Idempotency-Key, without scoring
        self.batch_sizes: Counter[int] = Counter()
        self._latency: deque[float] = deque(maxlen=window)
        self._batch: deque[float] = deque(maxlen=window)

    def request_done(self, route: str, status: int, seconds: float) -> None:
        self.responses[f"{route} {status}"] += 1
        self._latency.append(seconds)

    def items_done(self, scored: int, failed: int) -> None:
        self.items_scored += scored
        self.items_failed += failed

    def batch_done(self, size: int, seconds: float) -> None:
        self.batch_sizes[size] += 1
        self._batch.append(seconds)

    def snapshot(self, queue_depth: int, in_flight: int) -> dict[str, Any]:
        batches = sum(self.batch_sizes.values())
        items = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "queue_depth": queue_depth,
            "in_flight_requests": in_flight,
            "responses": dict(self.responses),
            "items_scored": self.items_scored,
            "items_failed": self.items_failed,
            "rejected_queue_full": self.rejected_queue_full,
            "replayed": self.replayed,
            "batches": batches,
            "batch_size": {
                "mean": round(items / batches, 3) if batches else None,
                "max": max(self.batch_sizes) if batches else None,
                "histogram": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            },
            "latency_ms": percentiles_ms(self._latency),
            "batch_ms": percentiles_ms(self._batch),
        }
