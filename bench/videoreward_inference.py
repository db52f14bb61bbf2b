"""VideoReward inference: mmreward scoring a VideoAlign-layout checkpoint vs VideoAlign's own procedure.

Model: a tiny random Qwen2-VL with VideoAlign's reward-token head (its "detailed_special" prompt,
sequential positions, normalisation statistics), written with `export_videoalign` into VideoAlign's
checkpoint layout (model_config.json + checkpoint-N/model.pth) and loaded back by
`RewardModel.from_pretrained`, built offline in a temp dir.
Clips: --clips synthetic videos (moving shapes, 2-4 s at 8-24 fps, 96x128), each scored once
against its own prompt, as VideoAlign's VideoGen-RewardBench script scores the distinct videos.

What is timed (interleaved, --repeats times each, medians reported):

* baseline, VideoAlign's procedure re-created step by step (`videoalign_procedure`): batches of 8
  clips in file order (its evaluation script's batch size); each clip read by decord with its
  frame rule (2 fps, at least 4, even count, rounded linspace indices) and resized as uint8 by
  bicubic interpolation to 28-multiples within [100,352, 200,704] pixels, then passed to the
  processor as floats (0-255) to be rescaled there; the whole model run with an attention mask and
  positions 0..L-1, `rm_head` applied to every position and read at the three reward tokens;
  normalisation and Overall in Python floats. Same weights, same processor.
* mmreward: `RewardModel.reward(paths, prompts)` (the same frame rule through
  `mmreward.data.qwen_video`, uint8 frames to the processor, the batched evaluation forward:
  length groups without masks, the last layer only at the three reward tokens) with
  --batch-size clips per forward.

Both must give the same rewards (max |difference| <= 1e-4, else it fails). The RESULT ratio is
baseline wall time over mmreward wall time. torch runs one CPU thread (stable timings on a shared
machine).

    python bench/videoreward_inference.py [--clips 16] [--batch-size 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import decord
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.cli import ArgParser, run
from mmreward.data.media import MediaConfig, write_video
from mmreward.data.qwen_video import qwen_frame_count, qwen_frame_size
from mmreward.model import RewardModel, ScoringSettings
from mmreward.videoalign import DIMENSIONS, TEMPLATE, TOKENS, export_videoalign

TARGET = 2.0
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def make_clips(root: Path, count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`count` clips of a coloured square moving over noise, and their prompts."""
    rng = np.random.default_rng(seed)
    paths, prompts = [], []
    for i in range(count):
        fps = float(rng.choice([8.0, 12.0, 24.0]))
        frames = int(fps * rng.uniform(2.0, 4.0))
        name, colour = list(COLOURS.items())[i % len(COLOURS)]
        video = rng.integers(0, 60, (frames, 96, 128, 3), dtype=np.uint8)
        for t in range(frames):
            x = int(8 + t * 90 / frames)
            video[t, 30:60, x:x + 30] = colour
        paths.append(str(write_video(root / f"clip{i:03d}.mp4", video, fps=fps)))
        prompts.append(f"a {name} square moving to the right")
    return paths, prompts


def build_checkpoint(root: Path) -> Path:
    """A VideoAlign-layout checkpoint of a tiny random Qwen2-VL reward-token model."""
    settings = ScoringSettings(positions="sequential", overall="sum", normalize=True,
                               media=MediaConfig(num_frames=None, fps=2.0, video_sampling="qwen",
                                                 video_max_pixels=200704))
    # video_tokens=256: frames of up to 200,704 pixels reach the model at the size the frame rule gave them,
    # as with Qwen2-VL-2B's processor (a processor that shrank them would resample them once more).
    backbone = build_tiny_vlm(root / "qwen2_vl", family="qwen2_vl", video_tokens=256)
    model = RewardModel.from_backbone(backbone, head="reward_token",
                                      dimensions=list(DIMENSIONS), head_options={"tokens": list(TOKENS),
                                                                                 "template": TEMPLATE},
                                      settings=settings, dtype="float32")
    torch.manual_seed(0)
    with torch.no_grad():
        model.head.proj.weight.normal_(0, 0.5)
    model.set_reward_stats({d: {"mean": 0.1 * i, "std": 0.5 + i} for i, d in enumerate(DIMENSIONS)})
    return export_videoalign(model, root / "videoreward")


def _videoalign_frames(path: str, fps: float = 2.0, min_pixels: int = 100352, max_pixels: int = 200704) -> torch.Tensor:
    """VideoAlign's fetch_video: decord, its frame rule, uint8 bicubic resize, then float (0-255), [T, C, H, W]."""
    reader = decord.VideoReader(path)
    total = len(reader)
    count = qwen_frame_count(total, reader.get_avg_fps(), fps)
    index = torch.linspace(0, total - 1, count).round().long().tolist()
    video = torch.tensor(reader.get_batch(index).asnumpy()).permute(0, 3, 1, 2)
    height, width = qwen_frame_size(video.shape[2], video.shape[3], min_pixels, max_pixels)
    return resize(video, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True).float()


@torch.no_grad()
def videoalign_procedure(model: RewardModel, paths: list[str], prompts: list[str]) -> list[dict[str, float]]:
    """VideoAlign's `VideoVLMRewardInference.reward` over its evaluation script's batches of 8, re-created."""
    processor, head, inner = model.processor, model.head, model._inner()
    stats = model.reward_stats
    rows = []
    for start in range(0, len(paths), 8):
        batch_paths, batch_prompts = paths[start:start + 8], prompts[start:start + 8]
        chats = [[{"role": "user", "content": [{"type": "video"},
                                               {"type": "text", "text": head.prompt_text.format(prompt=p)}]}]
                 for p in batch_prompts]
        texts = [processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        videos = [_videoalign_frames(p) for p in batch_paths]
        batch = processor(text=texts, videos=videos, padding=True, padding_side="right", return_tensors="pt",
                          do_sample_frames=False, do_rescale=True)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = inner.get_input_embeddings()(ids)
        features = inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output
        embeds = embeds.masked_scatter((ids == inner.config.video_token_id)[..., None], torch.cat(features))
        positions = torch.arange(ids.shape[1])[None, None].expand(3, ids.shape[0], -1)  # position_ids left unset
        hidden = inner.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        logits = head.proj(hidden)  # rm_head on every position
        special = torch.zeros_like(ids, dtype=torch.bool)
        for token_id in head.token_ids:
            special |= ids == token_id
        rewards = logits[special].view(ids.shape[0], 3, -1).diagonal(dim1=1, dim2=2)
        for reward in rewards.tolist():
            row = {d: (r - stats[d]["mean"]) / stats[d]["std"] for d, r in zip(DIMENSIONS, reward)}
            row["overall"] = row["VQ"] + row["MQ"] + row["TA"]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward in mmreward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths, prompts = make_clips(root / "clips", args.clips)
        model = RewardModel.from_pretrained(build_checkpoint(root), dtype="float32")
        variants = {
            "baseline (VideoAlign's procedure, batches of 8)": lambda: videoalign_procedure(model, paths, prompts),
            f"mmreward (RewardModel.reward, batches of {args.batch_size})":
                lambda: model.reward(paths, prompts, batch_size=args.batch_size),
        }
        for run in variants.values():  # warm-up
            run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for name, run in variants.items():  # interleaved: other load hits both alike
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)
    base, ours = (outputs[name] for name in variants)
    worst = max(abs(a[k] - b[k]) for a, b in zip(base, ours) for k in a)
    print(f"{args.clips} clips, torch threads {torch.get_num_threads()}, {args.repeats} repeats (medians)")
    for name, ts in times.items():
        print(f"{name:<52} {args.clips / statistics.median(ts):6.2f} clips/s  {[round(t, 2) for t in ts]} s")
    print(f"max |reward difference|: {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("mmreward's rewards differ from VideoAlign's procedure")
    ratio = statistics.median(times[list(variants)[0]]) / statistics.median(times[list(variants)[1]])
    print(f"RESULT videoreward_inference ratio={ratio:.2f} target={TARGET:g}")


if __name__ == "__main__":
    run(main)
