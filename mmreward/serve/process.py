"""Start `python -m mmreward.serve` as a subprocess and wait until it serves (benchmarks, tests, launchers).

    with ServerProcess(["--model", "runs/reward_image", "--media_root", "data", "--port", "0"]) as server:
        server.wait_ready()
        RemoteReward(server.url)(prompts, completions, images=images)
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Sequence

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """A reward server subprocess. args: the CLI's arguments; env: its environment (default: this one's).

    Its first stdout line gives the URL (`--port 0` picks a free port), within `start_timeout` seconds;
    stderr goes to a temporary file shown when it fails (`log()`).
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, start_timeout: float = 120.0):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "mmreward.serve", *args], stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=dict(env if env is not None else os.environ), text=True)
        assert self.proc.stdout is not None
        # The first line comes once the socket is bound, before the model loads.
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        found = _LISTENING.search(line)
        if found is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the reward server did not start (exit {self.proc.returncode}): {line}\n{self.log()}")
        self.url = found.group(1)

    def log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until GET /health answers 200; raises with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the reward server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the reward server at {self.url} was not ready after {timeout} s:\n{self.log()[-4000:]}")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM (the server answers what is in flight, then exits); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no draining, no cleanup (what a crash looks like)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        try:
            self.terminate(30.0)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
