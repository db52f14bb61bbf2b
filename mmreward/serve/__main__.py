"""Serve a reward model over HTTP, with dynamic batching.

    python -m mmreward.serve --model runs/reward_token_video --media_root /data/generated [--port 5000]
    MMREWARD_SERVER_TOKEN=secret python -m mmreward.serve --model /models/VideoReward \\
        --backbone /models/Qwen2-VL-2B-Instruct --host 0.0.0.0 --port 5001 --journal runs/rm.journal.jsonl

The server listens at once and loads the model in the background (GET /health says when it is ready);
it binds 127.0.0.1 unless --host says otherwise. The bearer token is read from $MMREWARD_SERVER_TOKEN
or --token_file (never from the command line, which other users can see). SIGTERM (or Ctrl-C) stops
accepting connections and answers the requests in flight before exiting. Exit code 2: the model could
not be loaded or the settings are wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Sequence

from mmreward.serve.config import TOKEN_ENV, ServerConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ServerConfig(model="")
    parser = argparse.ArgumentParser(prog="python -m mmreward.serve", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--model", required=True, help="reward model checkpoint directory (mmreward or VideoAlign)")
    parser.add_argument("--backbone", default=None, help="base backbone for LoRA / head-only / VideoAlign checkpoints")
    parser.add_argument("--dtype", default=defaults.dtype,
                        help="float32 | bfloat16 | float16 | auto (the checkpoint's)")
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: cuda if available, else cpu)")
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=defaults.port, help="TCP port (0: any free port)")
    parser.add_argument("--media_root", default=None, help="folder media paths in requests are resolved in "
                                                           "(default: none; media must be uploaded)")
    parser.add_argument("--max_batch", type=int, default=defaults.max_batch,
                        help="most items per forward (1: no batching)")
    parser.add_argument("--max_wait_ms", type=float, default=defaults.max_wait_ms,
                        help="how long a batch's first item waits for more")
    parser.add_argument("--max_queue", type=int, default=defaults.max_queue,
                        help="most items waiting; beyond it requests get 503 + Retry-After")
    parser.add_argument("--retry_after_s", type=int, default=defaults.retry_after_s, help="Retry-After of a 503")
    parser.add_argument("--token_file", default=None, help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--dimension", default=None,
                        help="the reward /get_reward returns (default: overall or the first)")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="report z-normalised rewards by default")
    norm.add_argument("--raw", dest="normalize", action="store_false", help="report raw rewards by default")
    parser.add_argument("--max_body_mb", type=float, default=defaults.max_body_mb, help="largest request body")
    parser.add_argument("--journal", default=None, help="JSONL of answered requests, read back after a restart")
    parser.add_argument("--drain_timeout_s", type=float, default=defaults.drain_timeout_s,
                        help="on SIGTERM, how long in-flight requests may take")
    parser.add_argument("--log_level", default="info", help="uvicorn log level (debug, info, warning, error)")
    parser.add_argument("--access_log", action="store_true", help="log every request")
    return parser.parse_args(argv)


def read_token(token_file: str | None) -> str | None:
    if token_file is not None:
        return Path(token_file).read_text().strip()
    return os.environ.get(TOKEN_ENV) or None


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind at once after a restart
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = ServerConfig(
            model=args.model, backbone=args.backbone, dtype=args.dtype, device=args.device, host=args.host,
            port=args.port, media_root=args.media_root, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, retry_after_s=args.retry_after_s, token=read_token(args.token_file),
            dimension=args.dimension, normalize=args.normalize, max_body_mb=args.max_body_mb, journal=args.journal,
            drain_timeout_s=args.drain_timeout_s)
        sock = listen(config.host, config.port)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    from mmreward.serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if not config.is_loopback and config.token is None:
        print(f"warning: listening on {config.host} without a token: anyone who can reach it can use it "
              f"(set ${TOKEN_ENV} or --token_file)", file=sys.stderr)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                                           timeout_graceful_shutdown=int(config.drain_timeout_s)))
    state = app.state.server
    state.on_load_failure = lambda: setattr(server, "should_exit", True)
    # uvicorn drains on SIGTERM / SIGINT, restores these handlers and re-raises the signal: a drained
    # shutdown then ends here with exit code 0 instead of dying of the signal.
    previous = {drained: signal.signal(drained, lambda *_: None) for drained in (signal.SIGTERM, signal.SIGINT)}
    host, port = sock.getsockname()[:2]
    print(f"mmreward.serve: listening on http://{f'[{host}]' if ':' in host else host}:{port} "
          f"(GET /health says when the model is loaded)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for drained, handler in previous.items():
            signal.signal(drained, handler)
    if state.status == "failed":
        print(f"error: {state.error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
