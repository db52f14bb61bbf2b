"""Training steps/s of the shared-prefix pair forward against the naive form.

Response pairs that share a prompt and two 448 px images: the naive form runs each side as its own
sequence (media encoded twice); the packed form runs `[prefix | response_a | response_b]` once per
pair with a block attention mask (`mmreward.pair_forward`). Both train the same tiny Qwen2.5-VL
reward model (fp32, AdamW, full fine-tuning) on the same pre-collated batches; a step is forward,
backward and optimizer update. Before timing, the first batch's loss and gradients of both forms
are compared (loss within 1e-6, every gradient tensor within 1e-4 relative error, ||d|| / ||g||).

    python bench/pair_training.py [--pairs 2] [--response_words 3 10] [--steps 24] [--threads 1]

The two forms train alternately, one step each, and steps/s count seconds of process CPU time (one
intra-op thread): other load on a shared machine then slows both alike and does not inflate the
time as it inflates wall-clock time (printed too). Ends with
`RESULT pair_training ratio=<packed steps/s / naive steps/s> target=1.8`.
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
    worst = max(relative_error(grads_p[n], g) for n, g in grads_n.items())
    if worst > 1e-4:
        raise SystemExit(f"gradients differ: relative error up to {worst:.2e} (limit 1e-4)")
    print(f"equal: loss {loss_n:.6f} (|diff| {abs(loss_n - loss_p):.1e}), gradients' relative error <= {worst:.1e}")


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| (absolute error when the reference is exactly zero)."""
    scale = reference.norm().item()
    return ((value - reference).norm() / scale).item() if scale > 0 else (value - reference).norm().item()


class Trainer:
    """One model copy with its own AdamW, trained one step at a time on a form's batches."""

    def __init__(self, model: RewardModel, batches: list[dict]):
        self.model, self.batches, self.done = model, batches, 0
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(self) -> tuple[float, float]:
        """One training step; returns its (process CPU seconds, wall-clock seconds)."""
        batch = self.batches[self.done % len(self.batches)]
        cpu, wall = time.process_time(), time.perf_counter()
        loss, _ = self.model.pair_loss(self.model(batch["inputs"]), batch["labels"], batch["label_mask"], LOSS)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.done += 1
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs per training step")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per form (alternating)")
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
        trainers = {form: Trainer(copy.deepcopy(base), batches[form]) for form in batches}
        for trainer in trainers.values():
            trainer.step()  # warm-up (allocator, optimizer state)
        cpu = {form: 0.0 for form in trainers}
        wall = {form: 0.0 for form in trainers}
        for _ in range(args.steps):  # alternate single steps, so slow phases of the machine hit both forms
            for form, trainer in trainers.items():
                c, w = trainer.step()
                cpu[form] += c
                wall[form] += w
        naive, packed = (args.steps / cpu[f] for f in ("naive", "shared_prefix"))
        print(f"steps per CPU-second: naive {naive:.3f}, shared-prefix block mask {packed:.3f}")
        print(f"steps per wall-clock second: naive {args.steps / wall['naive']:.3f}, "
              f"shared-prefix {args.steps / wall['shared_prefix']:.3f}")
        ratio = packed / naive
    print(f"RESULT pair_training ratio={ratio:.3f} target={TARGET}")


if __name__ == "__main__":
    main()
