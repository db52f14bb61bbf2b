"""VR-Thinker GRPO: multi-turn tool rollouts, rule rewards, per-turn rows with the exact windowed context.

    python train/vrt_grpo.py --config train/configs/vrt_grpo.yaml --model_path runs/vrt_sft --data runs/synthetic
    accelerate launch --config_file train/accelerate/ddp.yaml train/vrt_grpo.py --config ...      # many GPUs (DDP)

(The full recipe starts GRPO from the SFT on rejection-sampled traces: ``train/vr_thinker.sh``.)

Inputs:
- ``--model_path``: a finished VR-Thinker stage directory (``vrt_sft`` or ``vrt_grpo``; checked through its
  ``manifest.json``). Its ``vr_thinker.json`` gives the protocol preset and dimensions, which GRPO keeps; the
  preset's ``grpo`` section fills every loop setting the config leaves unset (for ``vr-thinker``: the official
  rewards, KL 0.01 in the reward, clip 0.2 / 0.35, losses summed / 200, temperature 1.0 then 0.9, top_p 0.95,
  top_k 40, lr 1e-6).
- ``--data``: a synthetic data directory (``videos/<train_split>.jsonl``) or a record JSONL of video pairs.
- ``--eval_records`` / ``--eval_pairs N``: a fixed set judged at the start, every ``eval_steps`` and at the end
  (default: the synthetic directory's ``eval_split``).

Output directory: the model (LoRA merged) and processor, ``vr_thinker.json``, ``resolved_config.yaml`` (usable as
``--config``), ``metrics.json``, ``example_trace.html`` (the final policy on one pair), ``logs/`` (TensorBoard and
``train_log.jsonl``), ``checkpoints/`` and ``manifest.json`` (stage ``vrt_grpo``). Rerunning the same command
resumes from the newest checkpoint. The loop itself is :class:`vr_thinker.grpo_loop.GRPOLoop`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmreward.cli import ScriptParser, run
from mmreward.data.records import RecordError, read_records
from mmreward.manifest import check_run_dir
from vr_thinker.grpo_config import GRPOConfig
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.stage_io import (
    LoRAArguments,
    eval_record_file,
    read_judge_input,
    record_file,
    require_settings,
)

if TYPE_CHECKING:
    from vr_thinker.grpo_loop import GRPOLoop, JudgePair

STAGE = "vrt_grpo"
INPUT_STAGES = ("vrt_sft", "vrt_grpo")


@dataclass
class VRTGRPOArguments(LoRAArguments):
    """Stage settings besides the loop (``GRPOConfig``; the rewards are the model's protocol preset's). With
    ``use_lora`` the reference model is the policy with its adapters off; ``lora_dropout`` 0 keeps rollout and
    update equal."""

    model_path: str = field(default="", metadata={"help": "vrt_sft / vrt_grpo stage output directory"})
    data: str = field(default="", metadata={"help": "synthetic data dir or a record JSONL of video pairs"})
    train_split: str = field(default="train", metadata={"help": "synthetic split to train on"})
    max_pairs: int | None = field(default=None, metadata={"help": "use at most this many training pairs"})
    eval_records: str | None = field(default=None, metadata={"help": "record JSONL of the fixed eval set"})
    eval_split: str = field(default="val", metadata={"help": "synthetic split of the fixed eval set"})
    eval_pairs: int = field(default=0, metadata={"help": "pairs in the fixed eval set (0: no eval)"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing"})


def parse_args(argv: list[str] | None = None) -> tuple[VRTGRPOArguments, GRPOConfig]:
    args, loop = ScriptParser((VRTGRPOArguments, GRPOConfig), __doc__).parse(argv)
    require_settings(model_path=args.model_path, data=args.data, output_dir=loop.output_dir)
    return args, loop


def judge_pairs(path: Path, limit: int | None, preset: ProtocolPreset,
                dimensions: Sequence[DimensionSpec]) -> list[JudgePair]:
    """The judging pairs of a record file; a RecordError naming the file and record when one cannot be judged."""
    from vr_thinker.grpo_loop import pairs_from_records

    try:
        return pairs_from_records(list(read_records(path))[:limit], preset, dimensions)
    except ValueError as err:
        if isinstance(err, RecordError):
            raise
        raise RecordError(str(err), path) from err


@dataclass
class StageInputs:
    """What `check_inputs` read: the starting judge's manifest and protocol, the training and eval pairs."""

    model_manifest: dict[str, Any]
    preset: ProtocolPreset
    dimensions: tuple[DimensionSpec, ...]
    train_path: Path
    pairs: list[JudgePair]
    eval_path: Path | None
    eval_pairs: list[JudgePair]


def check_inputs(args: VRTGRPOArguments, cfg: GRPOConfig) -> StageInputs:
    """Everything checked before a model loads or the output folder is touched: the starting judge (a finished stage
    with its protocol), the training and eval records, the output folder."""
    model_manifest, preset, dimensions = read_judge_input(args.model_path, INPUT_STAGES)
    train_path = record_file(args.data, args.train_split)
    pairs = judge_pairs(train_path, args.max_pairs, preset, dimensions)
    if not pairs:
        raise RecordError("no training pairs", train_path)
    eval_path = eval_record_file(args.eval_pairs, args.eval_records, args.data, args.eval_split)
    eval_pairs = judge_pairs(eval_path, args.eval_pairs, preset, dimensions) if eval_path else []
    check_run_dir(cfg.output_dir, STAGE)
    return StageInputs(model_manifest, preset, dimensions, train_path, pairs, eval_path, eval_pairs)


def write_example(model, processor, pair: JudgePair, loop: GRPOLoop, path: Path) -> None:
    """The final policy's greedy episode on one pair, as HTML."""
    from vr_thinker.env import VideoPairEnv
    from vr_thinker.protocol import verdict_labels
    from vr_thinker.rollout import HFRolloutEngine, SamplingConfig
    from vr_thinker.trace_html import write_trace_html

    env = VideoPairEnv(pair.prompt, pair.video_1, pair.video_2, loop.preset, loop.dimensions)
    model.eval()
    HFRolloutEngine(model, processor).rollout([env], SamplingConfig(do_sample=False,
                                                                    max_new_tokens=loop.cfg.max_new_tokens))
    write_trace_html(path, env, title=pair.id, label=verdict_labels(pair.label, loop.preset, loop.dimensions))


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    checked = check_inputs(args, cfg)
    model_manifest, preset, dimensions = checked.model_manifest, checked.preset, checked.dimensions
    pairs, eval_pairs, train_path, eval_path = checked.pairs, checked.eval_pairs, checked.train_path, checked.eval_path

    import torch
    import yaml
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vr_thinker.grpo_loop import GRPOLoop, require_data_parallel
    from vr_thinker.stage_io import protocol_summary, save_trained_judge

    out = Path(cfg.output_dir)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    accelerator = Accelerator(cpu=cfg.use_cpu or not torch.cuda.is_available(), log_with="tensorboard",
                              project_dir=str(out / "logs"))
    require_data_parallel(accelerator)  # a DistributedModeError (one line) before the folder is made
    if accelerator.is_main_process:
        start_run_dir(out, STAGE)
    accelerator.wait_for_everyone()

    set_seed(cfg.seed)
    model, processor = load_vlm(VLMLoadConfig(
        path=args.model_path, dtype=args.dtype, attn_implementation=args.attn_implementation,
        freeze_vision=args.freeze_vision, lora=args.lora(), gradient_checkpointing=args.gradient_checkpointing,
        tool_chat_template=True,
    ))
    if accelerator.is_main_process:
        resolved = {**asdict(args), **asdict(cfg.resolved(preset))}
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    loop = GRPOLoop(model, processor, pairs, preset, dimensions, cfg, eval_pairs=eval_pairs,
                    accelerator=accelerator, log_dir=out / "logs")
    metrics = loop.train()
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        trained = save_trained_judge(loop.unwrapped(), processor, out, preset, dimensions)
        write_example(trained, processor, (eval_pairs or pairs)[0], loop, out / "example_trace.html")
        metrics.update(train_pairs=len(pairs), eval_pairs=len(eval_pairs))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        inputs = {"model": args.model_path, "model_stage": model_manifest.get("stage"), "data": str(train_path),
                  "eval": str(eval_path) if eval_path else None, "protocol": protocol_summary(preset, dimensions)}
        finalize_run_dir(out, STAGE, inputs=inputs, metrics=metrics)
        accelerator.print(summary(out, metrics, preset.answer.overall_key))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def summary(out: Path, metrics: dict, overall_key: str) -> str:
    """The run's last line: steps, the fixed eval set's reward and overall accuracy at start and end, the folder."""
    parts = [f"done: {metrics['steps']} GRPO steps in {metrics['train_seconds']:.0f} s"]
    for key in ("eval_start", "eval_end"):
        if metrics.get(key):
            values = metrics[key]
            parts.append(f"{key.replace('_', ' ')}: reward {values['eval/reward']:.3f}, overall accuracy "
                         f"{values[f'eval/accuracy/{overall_key}']:.3f}")
    return "; ".join(parts) + f"; judge in {out} (load it with VRThinkerJudge.from_pretrained)"


if __name__ == "__main__":
    run(main)
