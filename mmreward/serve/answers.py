"""Answers by Idempotency-Key, so a retried request is scored once and answered the same way.

A client (e.g. `RemoteReward`) sends the same `Idempotency-Key` header with every try of one request.
The server remembers each key's answer (a 200 or a 400; a 503 or 500 is not an answer, a retry is
scored anew): a retry after a lost response gets the stored answer, and a retry that arrives while
the first try is still being scored waits for that try's answer. With a journal file, answers are
also appended there (one JSON line each, written before the response is sent), and a restarted
server reads them back, so a retry across a crash or restart is not scored twice either. The same
key with a different body is refused (409).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MAX_KEY_CHARS = 200
STORED_STATUSES = (200, 400)  # deterministic answers; anything else is retried, not replayed


@dataclass
class Answer:
    """A response: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class KeyConflict(ValueError):
    """An Idempotency-Key reused for a different request."""


def request_digest(route: str, body: bytes) -> str:
    return hashlib.sha256(route.encode() + b"\n" + body).hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise ValueError(f"Idempotency-Key must be 1..{MAX_KEY_CHARS} printable ASCII characters")


class AnswerBook:
    """Remembered answers (the newest `capacity` in memory), pending tries, and the optional journal."""

    def __init__(self, capacity: int, journal: str | Path | None = None):
        self.capacity = capacity
        self._answers: OrderedDict[str, tuple[str, Answer]] = OrderedDict()
        self._pending: dict[str, tuple[str, asyncio.Future[Answer]]] = {}
        self._journal: IO[str] | None = None
        if journal is not None:
            path = Path(journal)
            torn = False
            if path.is_file():
                self._replay(path)
                with path.open("rb") as f:
                    torn = f.seek(0, 2) > 0 and (f.seek(-1, 2), f.read(1))[1] != b"\n"
            self._journal = path.open("a", encoding="utf-8")
            if torn:  # end the half-written line of a killed server, or the next answer would join it
                self._journal.write("\n")

    def _replay(self, path: Path) -> None:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a server killed mid-write; never answered
                    continue
                self._remember(entry["key"], entry["digest"], Answer(entry["status"], entry["body"]))

    def _remember(self, key: str, digest: str, answer: Answer) -> None:
        self._answers[key] = (digest, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)

    def lookup(self, key: str, digest: str) -> Answer | asyncio.Future[Answer] | None:
        """The stored answer, the pending try's future, or None (a new request)."""
        found = self._answers.get(key) or self._pending.get(key)
        if found is None:
            return None
        if found[0] != digest:
            raise KeyConflict(f"Idempotency-Key {key!r} was used for a different request")
        return found[1]

    def begin(self, key: str, digest: str) -> None:
        self._pending[key] = (digest, asyncio.get_running_loop().create_future())

    def finish(self, key: str, answer: Answer) -> None:
        """Store (and journal) a final answer; hand it to anyone waiting on the same key."""
        digest, future = self._pending.pop(key)
        if answer.status in STORED_STATUSES:
            self._remember(key, digest, answer)
            if self._journal is not None:
                entry = {"key": key, "digest": digest, "status": answer.status, "body": answer.body}
                self._journal.write(json.dumps(entry) + "\n")
                self._journal.flush()  # in the OS's hands now: survives the process being killed
        future.set_result(answer)

    def abandon(self, key: str, err: BaseException) -> None:
        """The try failed without an answer; waiters get the error, a retry starts afresh."""
        _, future = self._pending.pop(key)
        if isinstance(err, asyncio.CancelledError):
            future.cancel()
            return
        future.set_exception(err)
        future.exception()  # mark retrieved: nobody may be waiting

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
