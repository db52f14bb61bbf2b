"""Fixtures of the reward server tests: a tiny saved reward model, a media root with files, links and a
file outside it, and real servers on free 127.0.0.1 ports (in this process, on a thread)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import uvicorn
from PIL import Image

from mmreward.data.media import write_video
from mmreward.model import RewardModel
from mmreward.serve.__main__ import listen
from mmreward.serve.app import create_app
from mmreward.serve.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def checkpoint(scalar_checkpoint) -> Path:
    """tests/conftest.py's scalar model (VQ, TA; overall = their sum, std 2 and 0.25), normalising by default."""
    return scalar_checkpoint


@pytest.fixture(scope="session")
def model(checkpoint) -> RewardModel:
    return RewardModel.from_pretrained(checkpoint)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """root/{a.png, b.mp4, c.jpg, sub/d.png, broken.mp4}, root/inner.png -> a.png (inside),
    root/escape.png -> a file outside."""
    base = tmp_path_factory.mktemp("served")
    root, outside = base / "media", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(root / "a.png")
    write_video(root / "b.mp4", rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8), fps=4.0)
    Image.fromarray(rng.integers(0, 256, (71, 97, 3), dtype=np.uint8)).save(root / "c.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "sub" / "d.png")
    (root / "broken.mp4").write_bytes(b"not a video")
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(outside / "secret.png")
    os.symlink(root / "a.png", root / "inner.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    return root


class ThreadServer:
    """A reward server app under uvicorn on a thread of this process, on a free 127.0.0.1 port."""

    def __init__(self, config: ServerConfig, load_model: Callable[[], RewardModel]):
        self.app = create_app(config, load_model)
        self.state = self.app.state.server
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the test server did not start"
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state.status != "ready":
            assert time.monotonic() < deadline and self.state.status != "failed", self.state.error
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture
def start_server(model, media_root) -> Callable[..., ThreadServer]:
    """`start_server(**ServerConfig fields)`: a ready server of `model` with `media_root`; stopped after the test.
    `load_model=` replaces the loader (the server is then not waited for)."""
    servers: list[ThreadServer] = []

    def start(load_model: Callable[[], RewardModel] | None = None, **settings: Any) -> ThreadServer:
        config = ServerConfig(**{"model": "test-model", "media_root": str(media_root), **settings})
        server = ThreadServer(config, load_model or (lambda: model))
        servers.append(server)
        if load_model is None:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server_env() -> dict[str, str]:
    """Environment of a server subprocess: this checkout importable, one OpenMP thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
