"""Training steps/s of the shared-prefix pair forward against the naive form.

Response pairs that share a prompt and two 448 px images: the naive form runs each side as its own
sequence (media encoded twice); the packed form runs `[prefix | response_a | response_b]` once per
pair with a block attention mask (`mmreward.pair_forward`). Both train the same tiny Qwen2.5-VL
reward model (fp32, AdamW, full fine-tuning) on the same pre-collated batches; a step is forward,
backward and optimizer update. Before timing, the first batch's loss and gradients of both forms
are compared (loss within 1e-6, every gradient within 1e-4 of its largest entry).

    python bench/pair_training.py [--pairs 2] [--response_words 3 10] [--rounds 5] [--steps 4] [--threads 1]

Ends with `RESULT pair_training ratio=<median over rounds of packed / naive steps/s> target=1.8`.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, PairCollator
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.records import PreferenceRecord, Side
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig

TARGET = 1.8
IMAGE_SIZE = 448
LOSS = PreferenceLossConfig()


def make_pairs(count: int, seed: int, words: tuple[int, int] = (3, 10)) -> list[PreferenceExample]:
    """Response pairs: two random 448 px images and a prompt shared by both sides, different responses
    of `words[0]`..`words[1]` words (the tiny byte-level tokenizer spends about 5 tokens per word)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        images = [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(2)]
        paths = [Path(f"pair{i}_{j}.png") for j in range(2)]
        responses = [" ".join(rng.choice(["red", "blue", "square", "circle", "left", "right"], size=n))
                     for n in rng.integers(words[0], words[1] + 1, size=2)]
        record = PreferenceRecord(f"pair{i}", "Compare the two pictures and describe the differences.",
                                  Side(images=paths, response=responses[0]), Side(images=paths, response=responses[1]),
                                  {"overall": "a" if i % 2 else "b"})
        examples.append(PreferenceExample(record, SideMedia(images, response=responses[0]),
                                          SideMedia(images, response=responses[1])))
    return examples


def loss_and_grads(model: RewardModel, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, _ = model.pair_loss(model(batch["inputs"]), batch["labels"], batch["label_mask"], LOSS)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def check_equal(model: RewardModel, naive: dict, packed: dict) -> None:
    loss_n, grads_n = loss_and_grads(model, naive)
    loss_p, grads_p = loss_and_grads(model, packed)
    if abs(loss_n - loss_p) > 1e-6:
        raise SystemExit(f"losses differ: naive {loss_n} vs packed {loss_p}")
    if grads_n.keys() != grads_p.keys():
        raise SystemExit("the two forms train different parameters")
    worst = max(((grads_p[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in grads_n.items())
    if worst > 1e-4:
        raise SystemExit(f"gradients differ by up to {worst:.2e} of their largest entry")
    print(f"equal: loss {loss_n:.6f} (|diff| {abs(loss_n - loss_p):.1e}), max relative gradient diff {worst:.1e}")


def steps_per_second(model: RewardModel, batches: list[dict], steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    def step(batch):
        loss, _ = model.pair_loss(model(batch["inputs"]), batch["labels"], batch["label_mask"], LOSS)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step(batches[0])  # warm-up (allocator, optimizer state)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs per training step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per form per round")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, each naive then packed (median ratio)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--response_words", type=int, nargs=2, default=(3, 10), metavar=("MIN", "MAX"),
                        help="response length range in words (short answers by default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # Up to 256 merged tokens per image: a 448 px image keeps its full 32 x 32 patch grid.
        backbone = build_tiny_vlm(Path(tmp) / "tiny", family="qwen2_5_vl", image_tokens=(4, 256))
        torch.manual_seed(0)
        base = RewardModel.from_backbone(backbone, dimensions=["overall"], dtype="float32",
                                         tuning=TuningConfig(mode="full", freeze_vision=False))
        examples = make_pairs(args.pairs * 4, seed=0, words=tuple(args.response_words))
        collators = {form: PairCollator(base.processor, ["overall"], CollateConfig(pair_form=form))
                     for form in ("naive", "shared_prefix")}
        batches = {form: [c(examples[i : i + args.pairs]) for i in range(0, len(examples), args.pairs)]
                   for form, c in collators.items()}
        tokens = {form: int(b[0]["inputs"]["attention_mask"].sum()) for form, b in batches.items()}
        print(f"{args.pairs} pairs/step, two {IMAGE_SIZE} px images per pair; LM tokens per step: "
              f"naive {tokens['naive']}, packed {tokens['shared_prefix']}")
        check_equal(base, batches["naive"][0], batches["shared_prefix"][0])
        ratios, rates = [], {"naive": [], "shared_prefix": []}
        for _ in range(args.rounds):  # back to back, so a change of machine load hits both forms alike
            for form in rates:
                rates[form].append(steps_per_second(copy.deepcopy(base), batches[form], args.steps))
            ratios.append(rates["shared_prefix"][-1] / rates["naive"][-1])
        naive, packed = (float(np.median(rates[f])) for f in ("naive", "shared_prefix"))
        ratio = float(np.median(ratios))
        print(f"naive {naive:.3f} steps/s, shared-prefix block mask {packed:.3f} steps/s (medians); "
              f"per-round ratios {[round(r, 2) for r in ratios]}")
    print(f"RESULT pair_training ratio={ratio:.3f} target={TARGET}")


if __name__ == "__main__":
    main()
