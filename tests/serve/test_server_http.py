"""The reward server over real HTTP on 127.0.0.1: equality with direct scoring, dynamic batching, bad items,
media-root confinement, the bounded queue, the token, health while loading, idempotency keys."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mmreward.serve.__main__ import main, parse_args
from mmreward.serve.config import ServerConfig
from mmreward.serve.media import open_in_root

PROMPT = "two red circles"


def post(url: str, items: list, normalize: bool | None = None, **headers: str) -> httpx.Response:
    body = {"items": items} if normalize is None else {"items": items, "normalize": normalize}
    return httpx.post(f"{url}/reward", json=body, headers=headers, timeout=60)


def direct(model, path: Path, prompt: str = PROMPT, normalize: bool | None = None) -> dict[str, float]:
    return model.reward([str(path)], prompt, normalize=normalize)[0]


def test_concurrent_requests_are_batched_together_and_equal_direct_scoring(start_server, model, media_root):
    server = start_server(max_batch=16, max_wait_ms=400)
    requests = [
        ([{"prompt": PROMPT, "image": "a.png"}], None),
        ([{"prompt": "a bouncing ball", "video": "b.mp4"}, {"prompt": PROMPT, "image": "c.jpg"}], None),
        ([{"prompt": PROMPT, "image": "sub/d.png"}], False),
        ([{"prompt": "a bouncing ball", "video": str(media_root / "b.mp4")}], True),  # absolute, inside the root
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: post(server.url, *r), requests))
    for (items, normalize), response in zip(requests, responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["dimensions"] == ["VQ", "TA", "overall"]
        assert body["normalized"] == (True if normalize is None else normalize)
        for item, rewards in zip(items, body["rewards"]):
            path = media_root / (item.get("image") or item["video"])
            assert rewards == pytest.approx(direct(model, path, item["prompt"], normalize), abs=1e-4)
    metrics = httpx.get(f"{server.url}/metrics").json()
    assert metrics["items_scored"] == 5 and metrics["responses"] == {"/reward 200": 4}
    assert sum(int(size) * n for size, n in metrics["batch_size"]["histogram"].items()) == 5
    assert metrics["batch_size"]["max"] > 1  # items of different requests shared a forward
    assert metrics["latency_ms"]["p50"] is not None and metrics["queue_depth"] == 0


def test_bad_items_are_named_and_never_fail_the_others(start_server, model, media_root):
    server = start_server(max_batch=32, max_wait_ms=300)
    outside = media_root.parent / "outside" / "secret.png"
    items = [
        {"prompt": PROMPT, "image": "a.png"},                  # 0 good
        {"prompt": PROMPT, "image": "missing.png"},            # 1 not found
        {"prompt": PROMPT, "image": "../outside/secret.png"},  # 2 '..' out of the root
        {"prompt": PROMPT, "image": str(outside)},             # 3 absolute, outside
        {"prompt": PROMPT, "image": "escape.png"},             # 4 a link leading out
        {"prompt": PROMPT, "vidoe": "b.mp4"},                  # 5 wrong field
        {"prompt": PROMPT, "image": {"base64": "not base64!"}},  # 6 bad upload
        {"prompt": PROMPT, "video": "broken.mp4"},             # 7 unreadable video
        {"prompt": PROMPT, "images": ["c.jpg", 7]},            # 8 wrong type inside a list
        {"prompt": PROMPT, "image": "inner.png"},              # 9 good: a link that stays inside
    ]
    other = [{"prompt": "a bouncing ball", "video": "b.mp4"}]  # another request in the same batch window
    with ThreadPoolExecutor(2) as pool:
        bad_future = pool.submit(post, server.url, items)
        time.sleep(0.05)
        good_response = post(server.url, other)
        response = bad_future.result()
    assert good_response.status_code == 200
    assert good_response.json()["rewards"][0] == pytest.approx(direct(model, media_root / "b.mp4", "a bouncing ball"),
                                                               abs=1e-4)
    assert response.status_code == 400
    body = response.json()
    errors = {e["index"]: e for e in body["errors"]}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [errors[i]["field"] for i in sorted(errors)] == ["image", "image", "image", "image", "vidoe", "image",
                                                              "video", "images[1]"]
    assert "missing.png: file not found" in errors[1]["message"]
    for i in (2, 3, 4):
        assert "outside the media root" in errors[i]["message"]
    assert "unknown field" in errors[5]["message"] and "base64" in errors[6]["message"]
    assert errors[7]["message"].startswith("broken.mp4: ")
    assert body["error"].startswith("8 of 10 items could not be scored: item 1 (image)")
    expected = direct(model, media_root / "a.png")
    assert body["rewards"][0] == pytest.approx(expected, abs=1e-4)
    assert body["rewards"][9] == pytest.approx(expected, abs=1e-4)
    assert all(body["rewards"][i] is None for i in errors)


def test_request_level_errors_name_the_field(start_server):
    server = start_server()
    cases = [
        (b"{not json", "body"),
        (json.dumps([1, 2]).encode(), "body"),
        (json.dumps({"items": []}).encode(), "items"),
        (json.dumps({"items": [{"prompt": "x"}], "normalise": True}).encode(), "normalise"),
        (json.dumps({"items": [{"prompt": "x"}], "normalize": "yes"}).encode(), "normalize"),
    ]
    for body, field in cases:
        response = httpx.post(f"{server.url}/reward", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body
        (error,) = response.json()["errors"]
        assert error["index"] is None and error["field"] == field and error["message"]
        assert response.json()["error"].startswith(field)


def test_media_stays_inside_the_root(start_server, model, media_root, tmp_path):
    # A directory link inside the root that leads out: refused by the resolve check ...
    os.symlink(media_root.parent / "outside", media_root / "out_dir")
    try:
        server = start_server()
        response = post(server.url, [{"prompt": PROMPT, "image": "out_dir/secret.png"}])
        assert response.status_code == 400 and "outside the media root" in response.json()["errors"][0]["message"]
        # ... and by the no-follow open, should a link appear between the check and the open.
        with pytest.raises(OSError):
            open_in_root(media_root.resolve(), Path("out_dir/secret.png"))
    finally:
        os.unlink(media_root / "out_dir")
    # Only regular files are opened: a FIFO inside the root is refused at once, not waited on.
    os.mkfifo(media_root / "pipe.png")
    try:
        response = post(server.url, [{"prompt": PROMPT, "image": "pipe.png"}])
        assert response.status_code == 400 and "not a regular file" in response.json()["errors"][0]["message"]
    finally:
        os.unlink(media_root / "pipe.png")
    # Without a media root no path is read; uploaded bytes score as the same file does.
    no_root = start_server(media_root=None)
    response = post(no_root.url, [{"prompt": PROMPT, "image": "a.png"}])
    assert response.status_code == 400 and "no media root" in response.json()["errors"][0]["message"]
    def upload(name: str) -> dict[str, str]:
        return {"base64": base64.b64encode((media_root / name).read_bytes()).decode()}

    uploads = [{"prompt": PROMPT, "image": upload("a.png")}, {"prompt": "a bouncing ball", "video": upload("b.mp4")}]
    response = post(no_root.url, uploads)
    assert response.status_code == 200, response.text
    assert response.json()["rewards"][0] == pytest.approx(direct(model, media_root / "a.png"), abs=1e-4)
    assert response.json()["rewards"][1] == pytest.approx(direct(model, media_root / "b.mp4", "a bouncing ball"),
                                                           abs=1e-4)


def test_a_full_queue_answers_503_with_retry_after(start_server):
    server = start_server(max_queue=2, max_batch=8, max_wait_ms=1500, retry_after_s=2)
    two = [{"prompt": PROMPT, "image": "a.png"}, {"prompt": PROMPT, "image": "c.jpg"}]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, server.url, two)
        deadline = time.monotonic() + 10
        while server.state.batcher.depth < 2:  # the first request's items wait out the batch window
            assert time.monotonic() < deadline
            time.sleep(0.01)
        full = post(server.url, [{"prompt": PROMPT, "image": "a.png"}])
        assert full.status_code == 503 and full.headers["Retry-After"] == "2"
        assert "queue full" in full.json()["error"]
        assert first.result().status_code == 200
    assert post(server.url, [{"prompt": PROMPT, "image": "a.png"}]).status_code == 200  # room again
    too_big = post(server.url, two + two[:1])
    assert too_big.status_code == 400 and too_big.json()["errors"][0]["field"] == "items"
    metrics = httpx.get(f"{server.url}/metrics").json()
    assert metrics["rejected_queue_full"] == 1 and metrics["responses"]["/reward 503"] == 1


def test_bearer_token(start_server):
    server = start_server(token="s3cret")
    item = [{"prompt": PROMPT, "image": "a.png"}]
    assert httpx.get(f"{server.url}/health").status_code == 200  # health needs no token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = post(server.url, item, **headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.post(f"{server.url}/get_reward", json={"query": ["x"]}).status_code == 401
    assert post(server.url, item, Authorization="Bearer s3cret").status_code == 200
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer s3cret"}).json()["items_scored"] == 1


def test_health_is_ready_only_once_the_model_is_loaded(start_server, model):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return model

    server = start_server(load_model=slow_load)
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503 and health.json()["status"] == "loading"
    early = post(server.url, [{"prompt": PROMPT, "image": "a.png"}])
    assert early.status_code == 503 and "Retry-After" in early.headers
    release.set()
    server.wait_ready()
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ready" and health["dimensions"] == ["VQ", "TA", "overall"]
    assert health["dimension"] == "overall" and health["normalized"] is True

    def broken_load():
        raise OSError("weights.safetensors: truncated")

    broken = start_server(load_model=broken_load)
    deadline = time.monotonic() + 10
    while broken.state.status != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    health = httpx.get(f"{broken.url}/health")
    assert health.status_code == 503 and "truncated" in health.json()["error"]


def test_an_idempotency_key_is_answered_once(start_server, tmp_path):
    journal = tmp_path / "answers.jsonl"
    server = start_server(journal=str(journal))
    item = [{"prompt": PROMPT, "image": "a.png"}]
    first = post(server.url, item, **{"Idempotency-Key": "req-1"})
    again = post(server.url, item, **{"Idempotency-Key": "req-1"})
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert again.headers["Idempotency-Replayed"] == "true" and "Idempotency-Replayed" not in first.headers
    bad = post(server.url, [{"prompt": PROMPT, "image": "missing.png"}], **{"Idempotency-Key": "req-2"})
    assert bad.status_code == 400  # a 400 is an answer too
    conflict = post(server.url, [{"prompt": "other", "image": "a.png"}], **{"Idempotency-Key": "req-1"})
    assert conflict.status_code == 409
    metrics = httpx.get(f"{server.url}/metrics").json()
    assert metrics["items_scored"] == 1 and metrics["replayed"] == 1
    server.stop()
    # A new server reading the journal answers the same key without scoring.
    restarted = start_server(journal=str(journal))
    replay = post(restarted.url, item, **{"Idempotency-Key": "req-1"})
    assert replay.json() == first.json() and replay.headers["Idempotency-Replayed"] == "true"
    assert post(restarted.url, [{"prompt": PROMPT, "image": "missing.png"}],
                **{"Idempotency-Key": "req-2"}).json() == bad.json()
    assert httpx.get(f"{restarted.url}/metrics").json()["items_scored"] == 0
    assert [json.loads(line)["key"] for line in journal.read_text().splitlines()] == ["req-1", "req-2"]


def test_cli_binds_the_loopback_address_and_exits_2_on_a_bad_model_or_setting(tmp_path, capsys):
    assert parse_args(["--model", "m"]).host == "127.0.0.1" and ServerConfig(model="m").is_loopback
    assert not ServerConfig(model="m", host="0.0.0.0").is_loopback
    assert main(["--model", str(tmp_path), "--max_batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    # Listens (on 127.0.0.1), fails to load the model, stops by itself.
    assert main(["--model", str(tmp_path / "missing"), "--port", "0", "--log_level", "error"]) == 2
    captured = capsys.readouterr()
    assert "listening on http://127.0.0.1:" in captured.out and "missing" in captured.err
