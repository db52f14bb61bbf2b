"""The reward server's parts without HTTP: OpenRLHF field mapping, item parsing, the scorer's per-item fallback,
the batcher's window and bound, the answer journal after a crash."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from mmreward.collate import processor_image_size
from mmreward.data.dataset import SideMedia, media_side
from mmreward.serve.answers import Answer, AnswerBook, KeyConflict
from mmreward.serve.batcher import DynamicBatcher, Job, ModelScorer, Prepared, QueueFull
from mmreward.serve.metrics import ServerMetrics
from mmreward.serve.schema import (
    ItemError, RewardItem, Upload, chat_user_text, label_media, openrlhf_items, parse_item, strip_trailing_tokens,
)

CHATML = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
          "<|vision_end|>Describe the picture.<|im_end|>\n<|im_start|>assistant\n")


def test_openrlhf_fields_map_onto_items():
    assert chat_user_text(CHATML) == "Describe the picture."
    assert chat_user_text("plain prompt") == "plain prompt"
    ends = ["<|im_end|>", "<|endoftext|>"]
    assert strip_trailing_tokens("A cat.<|im_end|><|endoftext|><|endoftext|>", ends) == "A cat."
    assert label_media("clips/x.MP4") == {"video": "clips/x.MP4"} and label_media("x.png") == {"image": "x.png"}
    assert label_media(None) == {} and label_media('{"images": ["a.png", "b.png"]}') == {"images": ["a.png", "b.png"]}
    with pytest.raises(ValueError, match="unknown media field 'audio'"):
        label_media({"audio": "a.wav"})
    items = openrlhf_items({"query": [CHATML + "A cat.<|im_end|>", "other text", 5],
                            "prompts": [CHATML, "different", "p"], "labels": ["x.png", None, None], "extra": 1},
                           ["<|im_end|>"])
    assert items[0] == RewardItem(prompt="Describe the picture.", response="A cat.", image="x.png")
    assert items[1] == ItemError(1, "query", "does not start with its prompt (prompts[i])")
    assert items[2] == ItemError(2, "query", "expected a string")


def test_items_are_checked_one_by_one():
    assert parse_item(0, {"prompt": "p", "image": {"base64": "QQ=="}}).image == Upload("QQ==")
    assert parse_item(3, {"prompt": "p", "image": ""}).field == "image"
    assert parse_item(4, {"image": "a.png"}) == ItemError(4, "prompt", "Field required")
    error = parse_item(5, {"prompt": "p", "images": ["a.png", {"data": "x"}]})
    assert error.index == 5 and error.field == "images[1]" and "base64" in error.message
    assert parse_item(6, "a.png").field == "item"


def test_scorer_scores_a_batch_as_direct_calls_and_isolates_a_failing_item(model, media_root):
    final = processor_image_size(model.processor)
    files = [media_root / "a.png", media_root / "b.mp4", media_root / "c.jpg"]
    sides = [media_side(str(f), model.settings.media, final_image_size=final) for f in files]
    broken = SideMedia(images=["not an image"])  # the processor cannot take it
    jobs = [Job("p", sides[0], True), Job("p", broken, True), Job("q", sides[1], False), Job("p", sides[2], True)]
    outcomes = ModelScorer(model)(jobs)
    assert isinstance(outcomes[1], Exception)
    assert outcomes[0] == pytest.approx(model.reward([str(files[0])], "p")[0], abs=1e-4)
    assert outcomes[2] == pytest.approx(model.reward([str(files[1])], "q", normalize=False)[0], abs=1e-4)
    assert outcomes[3] == pytest.approx(model.reward([str(files[2])], "p")[0], abs=1e-4)


def test_batcher_fills_batches_within_the_window_and_bounds_the_queue():
    seen: list[int] = []

    class Scorer:
        def prepare(self, jobs):
            return Prepared(jobs, {}, list(range(len(jobs))), [None] * len(jobs))

        def score(self, prepared):
            seen.append(len(prepared.jobs))
            return [{"r": float(len(j.prompt))} for j in prepared.jobs]

    async def scenario():
        metrics = ServerMetrics()
        batcher = DynamicBatcher(Scorer(), max_batch=3, max_wait_s=0.3, max_queue=5, metrics=metrics)
        batcher.start()
        batcher.reserve(5)
        with pytest.raises(QueueFull):
            batcher.reserve(1)
        side = SideMedia()
        early = asyncio.ensure_future(batcher.submit([Job("a", side, False), Job("bb", side, False)]))
        await asyncio.sleep(0.05)  # inside the first item's window
        late = asyncio.ensure_future(batcher.submit([Job("ccc", side, False), Job("dddd", side, False)]))
        started = time.perf_counter()
        last = await batcher.submit([Job("eeeee", side, False)])
        results = (await early, await late, last, time.perf_counter() - started)
        await batcher.stop()
        return results, batcher.depth, metrics

    (early, late, last, waited), depth, metrics = asyncio.run(scenario())
    assert [r["r"] for r in early + late + last] == [1, 2, 3, 4, 5]  # each job got its own outcome, in order
    assert seen == [3, 2] and depth == 0 and metrics.batch_sizes == {3: 1, 2: 1}
    assert waited >= 0.2  # the second batch's first item waited out its window for a third


def test_journal_survives_a_crash_mid_write(tmp_path):
    journal = tmp_path / "answers.jsonl"

    async def answer(book, key, digest, status):
        book.begin(key, digest)
        book.finish(key, Answer(status, {"rewards": [1.0]}))

    book = AnswerBook(10, journal)
    asyncio.run(answer(book, "k1", "d1", 200))
    asyncio.run(answer(book, "k2", "d2", 503))  # not an answer: not stored, a retry is scored again
    book.close()
    with journal.open("a") as f:
        f.write('{"key": "k3", "dig')  # the process was killed while writing this line
    reopened = AnswerBook(10, journal)
    assert reopened.lookup("k1", "d1").body == {"rewards": [1.0]}
    assert reopened.lookup("k2", "d2") is None and reopened.lookup("k3", "x") is None
    with pytest.raises(KeyConflict):
        reopened.lookup("k1", "other")
    asyncio.run(answer(reopened, "k4", "d4", 400))
    reopened.close()
    assert AnswerBook(10, journal).lookup("k4", "d4").status == 400  # not glued to the torn line
    assert [json.loads(line)["key"] for line in journal.read_text().splitlines() if line.endswith("}")] == ["k1", "k4"]
