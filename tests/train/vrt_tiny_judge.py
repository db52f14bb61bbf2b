"""A tiny VR-Thinker judge for the rejection-sampling and GRPO stage tests, built in a few seconds.

A one-layer tiny VLM is taught the answer format on short episodes of the vr-thinker protocol (overall verdict only,
pools of 4 frames per video, one-line instruction texts) with verdicts drawn at random, so its samples are mostly well-formed answers whose
verdicts are right about a third of the time: rejection sampling keeps some and drops others, and GRPO has a reward
to raise. The result is written as a finished ``vrt_sft`` stage directory (model, processor, ``vr_thinker.json``,
``manifest.json``), the input both stages expect.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
from mmreward.data.records import read_records
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.manifest import finalize_run_dir
from vr_thinker.env import VideoPairEnv
from vr_thinker.judge import save_judge_config
from vr_thinker.presets import load_preset
from vr_thinker.sft_data import VRThinkerSFTCollator, episode_rows

ENV = load_preset("vr-thinker", ["frames.per_video=4", "limits.max_tool_calls=1", "limits.max_turns=2",
                                 "limits.max_new_tokens=64", 'prompt.system="Judge."', 'prompt.first_turn="{prompt}"'])
DIMENSIONS: tuple = ()  # overall only: the shortest answer


def synthetic_videos(out: Path, train: int = 4, val: int = 4, seed: int = 1) -> Path:
    config = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(train, val, 0))
    generate_synthetic(out, seed=seed, config=config)
    return out


def relabelled(records_file: Path, overall: str, name: str) -> Path:
    """A copy of a record file (same folder, so media paths stay valid) whose every label is ``overall``."""
    lines = [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]
    for line in lines:
        line["label"] = {"overall": overall}
    target = records_file.with_name(name)
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return target


def tiny_judge(out: Path, records_file: Path, steps: int = 60, seed: int = 0) -> Path:
    """Write a ``vrt_sft`` stage directory at ``out`` holding a format-trained tiny judge."""
    torch.manual_seed(seed)
    base = build_tiny_vlm(out.parent / f"{out.name}_base", seed=seed, num_layers=1)
    model, processor = load_vlm(VLMLoadConfig(path=str(base), tool_chat_template=True, freeze_vision=True))
    examples = []
    for record in read_records(records_file):
        for verdict in (0, 1, 2):
            env = VideoPairEnv(record.prompt, record.a.video, record.b.video, ENV, DIMENSIONS)
            env.reset()
            env.step(f"<synthesis>.</synthesis><think>.</think><final answer>OA={verdict}</final answer>")
            examples += [row.example() for row in episode_rows(env)]
    collator = VRThinkerSFTCollator(processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        model(**collator(rng.sample(examples, 2))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    save_judge_config(out, ENV, DIMENSIONS)
    finalize_run_dir(out, "vrt_sft", inputs={"records": str(records_file)}, metrics={"warm_steps": steps})
    return out
