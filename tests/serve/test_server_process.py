"""`python -m mmreward.serve` as a process: a SIGKILL mid-load and a restart on the same port, with `RemoteReward`'s
retries answering every request exactly once; SIGTERM answering the requests in flight before exiting 0."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest

from mmreward.reward_fn import RewardFunction
from mmreward.serve import RemoteReward
from mmreward.serve.process import ServerProcess


def journal_keys(path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text().splitlines() if line.endswith("}")]


def sigterm_drains(server: ServerProcess, model, media_root) -> None:
    """Requests waiting in a long batch window when SIGTERM arrives are answered; then the server exits 0."""
    files = ["a.png", "c.jpg", "sub/d.png"]
    with ThreadPoolExecutor(len(files)) as pool:
        futures = [pool.submit(httpx.post, f"{server.url}/reward", json={"items": [{"prompt": "p", "image": f}]},
                               timeout=60) for f in files]
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/metrics").json()["queue_depth"] < len(files):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert server.terminate() == 0  # returns once the batch window closed and every answer went out
        answers = [f.result() for f in futures]
    for file, answer in zip(files, answers):
        assert answer.status_code == 200
        assert answer.json()["rewards"][0] == pytest.approx(model.reward([str(media_root / file)], "p")[0], abs=1e-4)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_sigkill_mid_load_restart_and_sigterm(checkpoint, model, media_root, server_env, tmp_path):
    """A server SIGKILLed while requests are queued and in flight, restarted at the same address: the clients'
    retries get every request answered exactly once (journal keys) with the in-process rewards. Then SIGTERM
    on the restarted server answers what is in flight before it exits. (One test: a server process takes
    seconds to start.)"""
    journal = tmp_path / "answers.jsonl"
    args = ["--model", str(checkpoint), "--media_root", str(media_root), "--journal", str(journal),
            "--max_batch", "4", "--max_wait_ms", "200", "--log_level", "warning"]
    first = ServerProcess([*args, "--port", "0"], env=server_env)
    first.wait_ready()
    port = urlparse(first.url).port
    assert urlparse(first.url).hostname == "127.0.0.1"  # the default bind
    remote = RemoteReward(first.url, retries=200, backoff_s=0.1, max_backoff_s=0.3, timeout=30)
    images = ["a.png", "c.jpg", "sub/d.png", "inner.png"]
    calls = [([f"prompt {k}"], [f"completion {k}"], [[images[k % 4]]]) for k in range(16)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lambda c: remote(c[0], c[1], images=c[2]), call) for call in calls]
        deadline = time.monotonic() + 120
        while len(journal_keys(journal)) < 4:
            assert time.monotonic() < deadline, first.log()[-3000:]
            time.sleep(0.01)
        first.kill()
        answered_before = len(journal_keys(journal))
        second = ServerProcess([*args, "--port", str(port), "--max_wait_ms", "2000"], env=server_env)
        try:
            results = [f.result(timeout=300) for f in futures]
            metrics = httpx.get(f"{second.url}/metrics").json()
            assert 4 <= answered_before < len(calls)
            keys = journal_keys(journal)
            assert len(keys) == len(set(keys)) == len(calls)  # all answered, none twice, across both servers
            assert metrics["items_scored"] + metrics["replayed"] >= len(calls) - answered_before
            function = RewardFunction(model)
            for (prompts, completions, media), got in zip(calls, results):
                expected = function(prompts, completions, images=[[str(media_root / media[0][0])]])
                assert got == pytest.approx(expected, abs=1e-4)
            sigterm_drains(second, model, media_root)
        finally:
            second.close()
