"""Training steps/s of the shared-prefix pair forward against the naive form.

Response pairs that share a prompt and two 448 px images: the naive form runs each side as its own
sequence (media encoded twice); the packed form runs `[prefix | response_a | response_b]` once per
pair with a block attention mask (`mmreward.forward.packed`). Both train the same reward model
(AdamW, fused on CUDA as the stage trainers use it there; full fine-tuning, vision tower included)
on the same pre-collated batches; a step is forward, backward and optimizer update. The update costs
the same in both forms, so the slower it is the lower the ratio: with 3.8B parameters and two pairs
per step, the default (foreach) AdamW's passes over every parameter-sized tensor are a large share
of an H100 step, which the fused kernel cuts to one read and write of each. Before timing, the
first batch's loss and gradients of both forms are compared: in fp32 the loss within 1e-6 and every gradient tensor within 1e-4 relative error
(||d|| / ||g||); in bf16 only the loss, within 2% (bf16 rounds differently in the two layouts).

    python bench/pair_training.py [--pairs 2] [--response_words 3 10] [--steps 24] [--threads 1]
    python bench/pair_training.py --preset 3b --device cuda --dtype bfloat16   # GPU check

Presets: `tiny` (~1M parameters, CPU) and `3b` (a random model with Qwen2.5-VL-3B's shapes, built
directly on the device; ~3.8B parameters with its vision tower, needs ~40 GiB of GPU memory).
The two forms train alternately, one step each, on one model. On CPU, steps/s count seconds of
process CPU time (one intra-op thread): other load on a shared machine then slows both alike and
does not inflate the time as it inflates wall-clock time (printed too). On CUDA they count
wall-clock seconds between synchronisations, and the peak memory of each form is printed. Ends with
`RESULT pair_training ratio=<packed steps/s / naive steps/s> target=<1.8 on CPU, 1.5 on CUDA>`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.cli import ArgParser, run
from mmreward.collate import CollateConfig, PairCollator
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.records import PreferenceRecord, Side
from mmreward.heads import build_head
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig

TARGETS = {"cpu": 1.8, "cuda": 1.5}
IMAGE_SIZE = 448
LOSS = PreferenceLossConfig()

# Qwen2.5-VL-3B-Instruct's shapes (its config.json); the tokenizer stays the tiny byte-level one,
# which only shrinks the embedding table (the scalar head never reads the LM head).
SHAPES_3B = {
    "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
    "mrope_section": [16, 24, 24],  # head_dim 128
}


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


def build_model(tiny_dir: Path, preset: str, device: str, dtype: torch.dtype) -> RewardModel:
    """The reward model of `preset` on `device`: the saved tiny backbone, or 3B shapes built in place."""
    if preset == "tiny":
        model = RewardModel.from_backbone(tiny_dir, dimensions=["overall"], dtype=str(dtype).removeprefix("torch."),
                                          tuning=TuningConfig(mode="full", freeze_vision=False))
        return model.to(device)
    config = AutoConfig.from_pretrained(tiny_dir)
    for key, value in SHAPES_3B["text"].items():
        setattr(config.text_config, key, value)
    config.text_config.rope_parameters["mrope_section"] = SHAPES_3B["mrope_section"]
    config.text_config.layer_types = ["full_attention"] * config.text_config.num_hidden_layers
    for key, value in SHAPES_3B["vision"].items():
        setattr(config.vision_config, key, value)
    with torch.device(device):  # random init on the GPU: seconds, where CPU init + copy takes minutes
        backbone = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    processor = RewardModel.from_backbone(tiny_dir).processor
    head = build_head("scalar", config.text_config.hidden_size, ["overall"]).to(device, dtype)
    return RewardModel(backbone, head, backbone_path=None, processor=processor,
                       tuning=TuningConfig(mode="full", freeze_vision=False))


def to_device(batch: dict, device: str, dtype: torch.dtype) -> dict:
    """A collated pair batch with its tensors on `device` (floating inputs in the model's dtype)."""
    inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in batch["inputs"].items()}
    return {**batch, "inputs": inputs, "labels": batch["labels"].to(device), "label_mask": batch["label_mask"].to(device)}


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
    if model._dtype() != torch.float32:
        if abs(loss_n - loss_p) > 0.02 * abs(loss_n):
            raise SystemExit(f"losses differ: naive {loss_n} vs packed {loss_p} (bf16 limit 2%)")
        print(f"equal to bf16 precision: loss {loss_n:.4f} vs {loss_p:.4f}")
        return
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
    """One model with its AdamW, trained one step at a time on either form's batches."""

    def __init__(self, model: RewardModel, batches: dict[str, list[dict]]):
        self.model, self.batches = model, batches
        self.done = {form: 0 for form in batches}
        self.cuda = next(model.parameters()).is_cuda
        # Fused on CUDA, as the stage scripts train there (mmreward.training.trainer.use_fused_adamw).
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                                           fused=self.cuda)

    def step(self, form: str) -> tuple[float, float, int]:
        """One training step on `form`; returns its (process CPU s, wall-clock s, peak CUDA bytes)."""
        batch = self.batches[form][self.done[form] % len(self.batches[form])]
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        cpu, wall = time.process_time(), time.perf_counter()
        loss, _ = self.model.pair_loss(self.model(batch["inputs"]), batch["labels"], batch["label_mask"], LOSS)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        self.done[form] += 1
        peak = torch.cuda.max_memory_allocated() if self.cuda else 0
        return time.process_time() - cpu, time.perf_counter() - wall, peak


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per training step")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per form (alternating)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--response_words", type=int, nargs=2, default=(3, 10), metavar=("MIN", "MAX"),
                        help="response length range in words (short answers by default)")
    parser.add_argument("--preset", choices=["tiny", "3b"], default="tiny", help="model size (module docstring)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device_kind = torch.device(args.device).type
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 equality check needs true fp32 matmuls
    with tempfile.TemporaryDirectory() as tmp:
        # Up to 256 merged tokens per image: a 448 px image keeps its full 32 x 32 patch grid.
        tiny_dir = build_tiny_vlm(Path(tmp) / "tiny", family="qwen2_5_vl", image_tokens=(4, 256))
        torch.manual_seed(0)
        model = build_model(tiny_dir, args.preset, args.device, dtype)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        examples = make_pairs(args.pairs * 4, seed=0, words=tuple(args.response_words))
        collators = {form: PairCollator(model.processor, ["overall"], CollateConfig(pair_form=form))
                     for form in ("naive", "shared_prefix")}
        batches = {form: [to_device(c(examples[i : i + args.pairs]), args.device, dtype)
                          for i in range(0, len(examples), args.pairs)]
                   for form, c in collators.items()}
        tokens = {form: int(b[0]["inputs"]["attention_mask"].sum()) for form, b in batches.items()}
        print(f"{args.preset} ({params:,.1f}M parameters, {args.dtype}, {args.device}); {args.pairs} pairs/step, "
              f"two {IMAGE_SIZE} px images per pair; LM tokens per step: naive {tokens['naive']}, "
              f"packed {tokens['shared_prefix']}")
        check_equal(model, batches["naive"][0], batches["shared_prefix"][0])
        trainer = Trainer(model, batches)
        for form in batches:
            trainer.step(form)  # warm-up (allocator, optimizer state, kernel selection)
        cpu = {form: 0.0 for form in batches}
        wall = {form: 0.0 for form in batches}
        peak = {form: 0 for form in batches}
        for _ in range(args.steps):  # alternate single steps, so slow phases of the machine hit both forms
            for form in batches:
                c, w, p = trainer.step(form)
                cpu[form] += c
                wall[form] += w
                peak[form] = max(peak[form], p)
        per_wall = {f: args.steps / wall[f] for f in batches}
        print(f"steps per wall-clock second: naive {per_wall['naive']:.3f}, shared-prefix {per_wall['shared_prefix']:.3f}")
        if device_kind == "cuda":
            print(f"peak GPU memory per step: naive {peak['naive'] / 2**30:.1f} GiB, "
                  f"shared-prefix {peak['shared_prefix'] / 2**30:.1f} GiB")
            ratio = per_wall["shared_prefix"] / per_wall["naive"]
        else:
            naive, packed = (args.steps / cpu[f] for f in ("naive", "shared_prefix"))
            print(f"steps per CPU-second: naive {naive:.3f}, shared-prefix block mask {packed:.3f}")
            ratio = packed / naive
    print(f"RESULT pair_training ratio={ratio:.3f} target={TARGETS.get(device_kind, TARGETS['cuda'])}")


if __name__ == "__main__":
    run(main)
