"""Reward models behind HTTP for RL trainers on other processes or machines.

    python -m mmreward.serve --model DIR [--media_root DIR] [--host 127.0.0.1] [--port 5000]

Server: `mmreward.serve.app` (FastAPI + uvicorn: /reward, OpenRLHF's /get_reward, /health, /metrics),
with dynamic batching (`batcher`), media confined to a root (`media`), request schema and per-item
errors (`schema`), answers kept by Idempotency-Key (`answers`) and metrics (`metrics`).
Client: `RemoteReward`, a TRL reward function with retries, timeouts and several servers.
README "Reward servers" shows a server per GPU and trainers pointed at them.
"""

from mmreward.serve.client import RemoteReward, RemoteRewardError
from mmreward.serve.config import ServerConfig

__all__ = ["RemoteReward", "RemoteRewardError", "ServerConfig"]
