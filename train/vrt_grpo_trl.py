"""Baseline VR-Thinker GRPO with plain TRL ``GRPOTrainer`` (``environment_factory``, no memory window).

    python train/vrt_grpo_trl.py --config train/configs/vrt_grpo_trl_baseline.yaml --model_path runs/vrt_sft \\
        --data runs/synthetic --output_dir runs/vrt_grpo_trl

Same inputs as ``train/vrt_grpo.py`` (a ``vrt_sft`` / ``vrt_grpo`` stage directory whose ``vr_thinker.json`` gives the
protocol preset; a synthetic directory or record JSONL) and the same reward, but TRL's tool loop trains one
append-only sequence per trace, so every tool image stays in the context (the memory window is turned off; the
saved ``vr_thinker.json`` records that). TRL settings (``num_generations``, ``beta`` = KL coefficient, ``epsilon`` /
``epsilon_high``, ``max_completion_length`` for a whole trace, ``max_tool_calling_iterations``, ``use_vllm``, ...)
come from TRL's ``GRPOConfig``; see docs/vr_thinker_scale_out.md for the comparison with the own loop.

Output directory: the model (LoRA merged) and processor, ``vr_thinker.json``, ``resolved_config.yaml``,
``metrics.json``, ``checkpoints/`` (TRL's, with its logs) and ``manifest.json`` (stage ``vrt_grpo_trl``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmreward.cli import parse_with_trl, run
from mmreward.data.records import RecordError, read_records
from mmreward.manifest import check_run_dir
from vr_thinker.stage_io import (
    LoRAArguments,
    check_resume_checkpoint,
    read_judge_input,
    record_file,
    require_settings,
)

if TYPE_CHECKING:  # TRL, torch and transformers are imported after parsing: --help answers at once
    from trl import GRPOConfig

STAGE = "vrt_grpo_trl"
INPUT_STAGES = ("vrt_sft", "vrt_grpo", "vrt_grpo_trl")
COMMON_TRL_FLAGS = ("output_dir", "max_steps", "learning_rate", "num_generations", "beta", "epsilon", "epsilon_high",
                    "max_completion_length", "max_tool_calling_iterations", "per_device_train_batch_size",
                    "logging_steps", "report_to", "seed", "use_vllm")


@dataclass
class TRLBaselineArguments(LoRAArguments):
    """Stage settings besides TRL's ``GRPOConfig`` (the rewards are the model's protocol preset's)."""

    model_path: str = field(default="", metadata={"help": "vrt_sft / vrt_grpo stage output directory"})
    data: str = field(default="", metadata={"help": "synthetic data dir or a record JSONL of video pairs"})
    train_split: str = field(default="train", metadata={"help": "synthetic split to train on"})
    max_pairs: int | None = field(default=None, metadata={"help": "use at most this many training pairs"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen"})


def parse_args(argv: list[str] | None = None) -> tuple[TRLBaselineArguments, GRPOConfig]:
    args, training = parse_with_trl((TRLBaselineArguments,), "GRPOConfig", __doc__, argv, COMMON_TRL_FLAGS)
    require_settings(model_path=args.model_path, data=args.data, output_dir=training.output_dir)
    return args, training


def main(argv: list[str] | None = None) -> dict:
    args, training = parse_args(argv)
    # Checked before a model loads or the output folder is touched: the starting judge, the records, the folder.
    model_manifest, saved_preset, dimensions = read_judge_input(args.model_path, INPUT_STAGES)
    records_path = record_file(args.data, args.train_split)
    records = list(read_records(records_path))[: args.max_pairs]
    if not records:
        raise RecordError("no records", records_path)
    check_resume_checkpoint(training.resume_from_checkpoint)
    check_run_dir(training.output_dir, STAGE)

    import yaml
    from accelerate import PartialState
    from transformers import set_seed

    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vr_thinker.stage_io import protocol_summary, save_trained_judge
    from vr_thinker.trl_baseline import (
        TRLJudgeEnvironment,
        baseline_preset,
        judge_dataset,
        make_reward_function,
    )
    from vr_thinker.trl_trainers import ModeCheckedGRPOTrainer

    preset = baseline_preset(saved_preset)
    out = Path(training.output_dir)
    state = PartialState()
    if state.is_main_process:
        start_run_dir(out, STAGE)
    state.wait_for_everyone()

    set_seed(training.seed)
    model, processor = load_vlm(VLMLoadConfig(path=args.model_path, dtype=args.dtype, freeze_vision=args.freeze_vision,
                                              lora=args.lora(), tool_chat_template=True))
    processor.tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    # TRL checkpoints and logs go below the stage directory, outside the checksummed files. Set in place:
    # dataclasses.replace would rerun GRPOConfig's checks on fields it already derived.
    resolved = {**asdict(args), **training.to_dict()}
    training.output_dir = str(out / "checkpoints")
    training.max_tool_calling_iterations = training.max_tool_calling_iterations or preset.limits.max_tool_calls
    trainer = ModeCheckedGRPOTrainer(
        model=model,
        reward_funcs=[make_reward_function(preset, dimensions)],
        args=training,
        train_dataset=judge_dataset(records, preset, dimensions),
        processing_class=processor,
        environment_factory=lambda: TRLJudgeEnvironment(preset, dimensions),
    )
    result = trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    state.wait_for_everyone()
    metrics: dict = {}
    if state.is_main_process:
        save_trained_judge(trainer.accelerator.unwrap_model(trainer.model), processor, out, preset, dimensions)
        history = [row for row in trainer.state.log_history if "reward" in row]
        metrics = {
            "steps": result.global_step,
            "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
            "reward_first": history[0]["reward"] if history else None,
            "reward_last": history[-1]["reward"] if history else None,
            "log": history,
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        inputs = {"model": args.model_path, "model_stage": model_manifest.get("stage"), "data": str(records_path),
                  "protocol": protocol_summary(preset, dimensions)}
        finalize_run_dir(out, STAGE, inputs=inputs, metrics={k: v for k, v in metrics.items() if k != "log"})
        print(summary(out, metrics))
    state.wait_for_everyone()
    return metrics


def summary(out: Path, metrics: dict) -> str:
    """The run's last line: steps, the mean reward of the first and last logged steps, the folder."""
    rewards = ("n/a" if metrics["reward_first"] is None
               else f"{metrics['reward_first']:.3f} (first logged step) -> {metrics['reward_last']:.3f} (last)")
    return (f"done: {metrics['steps']} GRPO steps in {metrics['train_seconds']:.0f} s; mean reward {rewards}; "
            f"judge in {out} (load it with VRThinkerJudge.from_pretrained)")


if __name__ == "__main__":
    run(main)
