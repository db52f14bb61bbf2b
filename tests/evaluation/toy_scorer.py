"""A deterministic scorer for runner and CLI tests (no model): exact, hand-computable deltas.

Side score: mean of the first image / video frame (0..1) + len(response) / 10, reported under
"overall" and "TA". cost = length of the longer response. A prompt containing "REJECT" makes
`score` raise SampleError for the whole batch (the runner must narrow it down to that pair); one
containing "UNCOLLATABLE" makes `collate` raise it. `collate` notes the process it ran in
(the batch's "pid"); `score` keeps those in `collate_pids`.
`TOY_SLEEP` (seconds, env) slows each batch down, for kill-and-resume tests; with `TOY_LOG_DIR`
set, each process appends the ids it scores to `TOY_LOG_DIR/<pid>.txt`. Also usable as a
`--scorer tests/evaluation/toy_scorer.py:build` factory of eval/preference.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmreward.data.records import PreferenceRecord, Side
from mmreward.evaluation.scorers import BaseScorer, MediaConfig, PairScore, SampleError, load_pair_media


def side_value(media) -> float:
    if media.images:
        pixels = np.asarray(media.images[0], dtype=np.float64)
    elif media.video is not None:
        pixels = media.video.frames[0].astype(np.float64)
    else:
        pixels = np.zeros(1)
    return float(pixels.mean() / 255.0) + len(media.response or "") / 10.0


class ToyScorer(BaseScorer):
    name = "toy"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []  # ids of every scored batch, in order
        self.collate_pids: list[int] = []  # the collating process of every scored batch
        self.sleep = float(os.environ.get("TOY_SLEEP", "0"))

    def cost(self, record: PreferenceRecord) -> float:
        return float(max(len(record.a.response or ""), len(record.b.response or "")))

    def prepare(self, record: PreferenceRecord):
        return load_pair_media(record, MediaConfig(num_frames=2))

    def collate(self, items: Sequence) -> dict:
        if any("UNCOLLATABLE" in ex.record.prompt for ex in items):
            raise SampleError("toy scorer cannot collate prompts containing UNCOLLATABLE")
        # A plain dict: it crosses from DataLoader workers, and this module is loaded from a path.
        return {"items": list(items), "pid": os.getpid()}

    def score(self, batch: dict) -> list[PairScore]:
        items = batch["items"]
        self.collate_pids.append(batch["pid"])
        if self.sleep:
            time.sleep(self.sleep)
        if any("REJECT" in ex.record.prompt for ex in items):
            raise SampleError("toy scorer rejects prompts containing REJECT")
        self.batches.append([ex.record.id for ex in items])
        if os.environ.get("TOY_LOG_DIR"):
            with open(os.path.join(os.environ["TOY_LOG_DIR"], f"{os.getpid()}.txt"), "a") as log:
                log.write("".join(ex.record.id + "\n" for ex in items))
        out = []
        for ex in items:
            a, b = side_value(ex.a), side_value(ex.b)
            out.append(PairScore(delta={"overall": a - b, "TA": a - b},
                                 score_a={"overall": a, "TA": a}, score_b={"overall": b, "TA": b}))
        return out


def build(args, device) -> ToyScorer:
    """eval/preference.py factory."""
    return ToyScorer()


def expected_delta(record: PreferenceRecord) -> float:
    """What ToyScorer gives a record whose sides are one solid-colour image + a response."""
    def value(side: Side) -> float:
        from PIL import Image

        with Image.open(side.image) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
        return float(pixels.mean() / 255.0) + len(side.response or "") / 10.0

    return value(record.a) - value(record.b)


def write_toy_records(folder, n: int, corrupt: Sequence[int] = (), reject: Sequence[int] = (),
                      uncollatable: Sequence[int] = ()) -> Path:
    """`folder/records.jsonl` with n pairs of solid-colour PNGs + responses of varying length.

    Pair i: a's grey level (37 * i) % 256, b's (91 * i + 50) % 256; every 4th pair (i % 4 == 3) is
    labelled tie, the others follow the toy score (so the toy scorer is right on all of them,
    except pairs whose delta is 0). `corrupt` pairs get a truncated PNG on side a, `reject`
    pairs a prompt the toy scorer rejects, `uncollatable` pairs one it cannot collate. meta: item_id = i // 2, category = "c{i % 2}".
    """
    from pathlib import Path

    from PIL import Image

    from mmreward.data.records import write_records

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        paths = {}
        for side, level in (("a", (37 * i) % 256), ("b", (91 * i + 50) % 256)):
            path = folder / "img" / f"{i}_{side}.png"
            Image.new("RGB", (16, 16), (level, level, level)).save(path)
            paths[side] = path
        if i in corrupt:
            paths["a"].write_bytes(paths["a"].read_bytes()[:30])
        record = PreferenceRecord(
            id=f"p{i:03d}",
            prompt=("REJECT " if i in reject else "") + ("UNCOLLATABLE " if i in uncollatable else "") + f"prompt {i}",
            a=Side(image=paths["a"], response="x" * (i % 5)), b=Side(image=paths["b"], response="y" * (3 * i % 4)),
            label={"overall": "tie"}, meta={"item_id": str(i // 2), "category": f"c{i % 2}"},
        )
        if i % 4 != 3 and i not in corrupt:
            sign = expected_delta(record)
            record.label = {"overall": "a" if sign > 0 else "b", "TA": "a" if sign > 0 else "b"}
        rows.append(record)
    return write_records(folder / "records.jsonl", rows)
