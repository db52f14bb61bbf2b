"""Trainers' views of the server: OpenRLHF's /get_reward shapes, `RemoteReward` as a TRL reward function (several
servers, retries that stop at a 400 or 401), and the verl custom reward function example."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mmreward.reward_fn import RewardFunction
from mmreward.serve import RemoteReward, RemoteRewardError
from mmreward.serve.client import RETRIED_STATUSES
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "two red circles"


def openrlhf_prompt(model, text: str, image: bool) -> str:
    """A prompt as OpenRLHF's dataset renders it with the policy's chat template (Qwen-VL's ChatML)."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return model.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                               add_generation_prompt=True)


def test_openrlhf_get_reward_request_and_response_shapes(start_server, model, media_root):
    server = start_server(max_wait_ms=50)
    prompts = [openrlhf_prompt(model, PROMPT, True), openrlhf_prompt(model, "a bouncing ball", False),
               openrlhf_prompt(model, "plain text", False)]
    responses = ["A red answer.", "It bounces twice.", "Words only."]
    # OpenRLHF's SingleTurnAgentExecutor posts exactly these keys: the decoded prompt + response (special
    # tokens kept), the prompt, and the dataset's label column (here: the media path under the root).
    payload = {"query": [p + r + "<|im_end|><|endoftext|>" for p, r in zip(prompts, responses)],
               "prompts": prompts, "labels": ["a.png", "b.mp4", None]}
    answer = httpx.post(f"{server.url}/get_reward", json=payload, timeout=60)
    answer.raise_for_status()  # what OpenRLHF's client does before reading the JSON
    body = answer.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert body["scores"] == body["rewards"] and len(body["rewards"]) == 3
    assert set(body["extra_logs"]) == {"VQ", "TA", "overall"} and body["extra_logs"]["overall"] == body["rewards"]
    # The same completions through the in-process TRL reward function.
    expected = RewardFunction(model)([PROMPT, "a bouncing ball", "plain text"], responses,
                                     images=[[str(media_root / "a.png")], None, None],
                                     videos=[None, str(media_root / "b.mp4"), None])
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)
    assert len(set(round(r, 5) for r in body["rewards"])) == 3
    # Labels may also name several media fields as JSON; wrong shapes are named.
    label = '{"video": "b.mp4"}'
    same = httpx.post(f"{server.url}/get_reward", json={**payload, "labels": ["a.png", label, None]}).json()
    assert same["rewards"] == pytest.approx(body["rewards"], abs=1e-4)
    bad = httpx.post(f"{server.url}/get_reward", json={**payload, "labels": ["a.png", "missing.mp4", '{"audio": 1}']})
    assert bad.status_code == 400
    assert [(e["index"], e["field"]) for e in bad.json()["errors"]] == [(1, "video"), (2, "labels")]
    assert bad.json()["rewards"][0] == pytest.approx(body["rewards"][0], abs=1e-4)
    short = httpx.post(f"{server.url}/get_reward", json={**payload, "prompts": prompts[:2]})
    assert short.status_code == 400 and short.json()["errors"][0]["field"] == "prompts"
    # Without prompts the query is the prompt and nothing is a response.
    bare = httpx.post(f"{server.url}/get_reward", json={"query": [PROMPT], "labels": ["a.png"]}).json()
    assert bare["rewards"] == pytest.approx([model.reward([str(media_root / "a.png")], PROMPT)[0]["overall"]], abs=1e-4)


def test_remote_reward_is_the_in_process_reward_function_over_http(start_server, model, media_root):
    servers = [start_server(max_wait_ms=20), start_server(max_wait_ms=20)]
    remote = RemoteReward([s.url for s in servers], batch_size=2, dimension="VQ")
    prompts = [PROMPT, "a bouncing ball", PROMPT, [{"role": "user", "content": "chat prompt"}], PROMPT]
    completions = ["first", "second", [{"role": "assistant", "content": "third"}], "fourth", "fifth"]
    images = [[str(media_root / "a.png")], None, [str(media_root / "c.jpg"), str(media_root / "sub" / "d.png")],
              None, str(media_root / "a.png")]
    videos = [None, str(media_root / "b.mp4"), None, str(media_root / "b.mp4"), None]
    got = remote(prompts, completions, images=images, videos=videos)
    expected = RewardFunction(model, dimension="VQ")(prompts, completions, images=images, videos=videos)
    assert got == pytest.approx(expected, abs=1e-4)
    counts = [httpx.get(f"{s.url}/metrics").json()["items_scored"] for s in servers]
    assert sorted(counts) == [2, 3]  # three requests of at most 2 items, spread over both servers
    # Uploading the bytes instead of sending paths scores the same.
    uploaded = RemoteReward(servers[0].url, upload=True, dimension="VQ")(prompts, completions, images=images,
                                                                          videos=videos)
    assert uploaded == pytest.approx(expected, abs=1e-4)


def test_remote_reward_does_not_retry_bad_items_or_a_wrong_token(start_server, media_root):
    server = start_server()
    remote = RemoteReward(server.url, batch_size=2, retries=5, backoff_s=1.0)
    started = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"answered 400: item 3 \(images\[0\]\): missing.png: file not found"):
        remote([PROMPT] * 4, ["a", "b", "c", "d"], images=[[str(media_root / "a.png")]] * 3 + [["missing.png"]])
    assert time.monotonic() - started < 5  # no backoff waits: a 400 is final
    secured = start_server(token="s3cret")
    with pytest.raises(RemoteRewardError, match="answered 401"):
        RemoteReward(secured.url, token="wrong", retries=5, backoff_s=1.0)([PROMPT], ["a"])
    assert RemoteReward(secured.url, token="s3cret")([PROMPT], ["a"], images=[["a.png"]])  # a path under the root
    assert 400 not in RETRIED_STATUSES and 503 in RETRIED_STATUSES
    # Nothing listening: the tries run out and the error names the items and the last failure.
    with pytest.raises(RemoteRewardError, match=r"items 0\.\.0: no answer after 3 tries; last: .*ConnectError"):
        RemoteReward("http://127.0.0.1:9", retries=2, backoff_s=0.01)([PROMPT], ["a"])


def test_verl_custom_reward_function_example(start_server, model, media_root, monkeypatch):
    example = load_script("examples/verl_reward.py")
    server = start_server()
    expected = RewardFunction(model)([PROMPT, "a bouncing ball"], ["an answer", "another"],
                                     images=[[str(media_root / "a.png")], None],
                                     videos=[None, str(media_root / "b.mp4")])
    one = example.compute_score("gen_images", "an answer", None, {"prompt": PROMPT, "image": "a.png"},
                                urls=[server.url])
    assert one["score"] == pytest.approx(expected[0], abs=1e-4)
    assert set(one) == {"score", "reward_VQ", "reward_TA", "reward_overall"}
    monkeypatch.setenv(example.URLS_ENV, server.url)
    batch = example.compute_score_batch(["a", "b"], ["an answer", "another"], [PROMPT, "a bouncing ball"],
                                        [{"image": "a.png"}, {"video": "b.mp4"}], dimension="overall")
    assert [b["score"] for b in batch] == pytest.approx(expected, abs=1e-4)
