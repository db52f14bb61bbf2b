"""VR-Thinker cold-start SFT: train a VLM on judging traces (teacher or imported), loss on assistant tokens only.

    python train/vrt_sft.py --config train/configs/vrt_sft.yaml                     # CPU, tiny model, synthetic data
    python train/vrt_sft.py --config train/configs/vrt_sft.yaml --model_path /models/Qwen2.5-VL-7B-Instruct \\
        --data runs/synthetic --dtype bfloat16 --bf16 true --use_lora true --output_dir runs/vrt_sft
    accelerate launch --config_file train/accelerate/ddp.yaml train/vrt_sft.py --config ...   # or deepspeed_zero2.yaml

Inputs:
- ``--model_path``: a model directory (a checkpoint, or the output of a previous VR-Thinker stage), or ``tiny`` /
  ``tiny:<family>`` to build a tiny random model into ``<output_dir>/tiny_backbone`` (tests, demo).
- ``--data``: a synthetic data directory (teacher traces are written from ``videos/<train_split>.jsonl``), a
  previous stage's output directory holding ``traces.jsonl`` (e.g. rejection sampling), or a trace JSONL file from
  a stronger judge (format in ``vr_thinker/cold_start.py``; every line is replayed and checked).
- ``--preset`` (default ``vr-thinker``) with ``--preset_overrides``: the protocol of teacher traces and of trace
  lines that name none; the trained judge records the traces' protocol in ``vr_thinker.json`` and the manifest.

Output directory: the model (LoRA merged into the weights) and processor, ``vr_thinker.json`` (the protocol preset
for ``VRThinkerJudge.from_pretrained``), ``traces.jsonl`` (the training traces), ``example_trace.html`` (a
training trace), ``eval_trace.html`` (the trained judge on a held-out pair, with ``--eval_pairs``),
``resolved_config.yaml``, ``metrics.json``, ``checkpoints/`` (trainer checkpoints and logs) and ``manifest.json``
(stage ``vrt_sft``). With ``--eval_pairs N`` the judge is run greedily on N held-out pairs after training (and
before, with ``--eval_before true``) and its format-valid rate and accuracies go into the metrics.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmreward.cli import parse_with_trl, run
from mmreward.data.records import read_records
from mmreward.errors import MissingInputError, UsageError
from mmreward.manifest import (
    INCOMPLETE_MARKER,
    MANIFEST_NAME,
    check_run_dir,
    read_manifest,
)
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.stage_io import (
    LoRAArguments,
    PresetArguments,
    check_resume_checkpoint,
    eval_record_file,
    require_settings,
)

if TYPE_CHECKING:  # TRL, torch and transformers are imported after parsing: --help answers at once
    from accelerate import PartialState
    from trl import SFTConfig

    from vr_thinker.cold_start import EpisodeTrace

STAGE = "vrt_sft"
TRACES_NAME = "traces.jsonl"
MODEL_STAGES = ("vrt_sft", "vrt_grpo", "vrt_grpo_trl")  # stage folders that hold a judge to train further
TINY_DEFAULT = "tiny"  # a tiny random model (mmreward.backbones.tiny.TINY_SPEC)
COMMON_TRL_FLAGS = ("output_dir", "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "max_length", "bf16", "logging_steps", "save_steps", "report_to",
                    "resume_from_checkpoint", "seed")


@dataclass
class VRTSFTArguments(LoRAArguments, PresetArguments):
    """Stage settings besides TRL's ``SFTConfig`` (learning rate, steps, batch size, output_dir, ...)."""

    model_path: str = field(default=TINY_DEFAULT, metadata={"help": "model dir, previous stage dir, or tiny[:family]"})
    data: str = field(default="", metadata={"help": "synthetic data dir, stage dir with traces.jsonl, or a .jsonl"})
    train_split: str = field(default="train", metadata={"help": "synthetic split the teacher writes traces for"})
    max_pairs: int | None = field(default=None, metadata={"help": "use at most this many pairs/traces"})
    teacher_style: str = field(default="full", metadata={"help": "teacher reasoning: full | brief"})
    teacher_seed: int = field(default=0, metadata={"help": "seed of the teacher's tool-call choices"})
    motion_frames: int = field(default=4, metadata={"help": "consecutive frames per teacher tool call"})
    require_correct: bool = field(default=False, metadata={"help": "imported traces: drop wrong verdicts"})
    skip_invalid: bool = field(default=False, metadata={"help": "imported traces: skip bad lines instead of failing"})
    merge_rows: bool = field(default=True, metadata={"help": "one row for turns whose contexts extend each other"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    eval_records: str | None = field(default=None, metadata={"help": "record JSONL to evaluate on (default: the "
                                                                        "synthetic dir's eval split)"})
    eval_split: str = field(default="val", metadata={"help": "synthetic split to evaluate on"})
    eval_pairs: int = field(default=0, metadata={"help": "held-out pairs judged greedily after training; 0 = none"})
    eval_before: bool = field(default=False, metadata={"help": "also judge them with the untrained model"})
    eval_max_new_tokens: int | None = field(default=None, metadata={"help": "token limit per generated turn in "
                                                                          "evaluation (default: the preset's)"})
    eval_batch_size: int = field(default=8, metadata={"help": "episodes generated together in evaluation"})


def parse_args(argv: list[str] | None = None) -> tuple[VRTSFTArguments, SFTConfig]:
    args, training = parse_with_trl((VRTSFTArguments,), "SFTConfig", __doc__, argv, COMMON_TRL_FLAGS)
    require_settings(data=args.data, output_dir=training.output_dir)
    from mmreward.training.distributed import hf_trainer_device_args

    device_args = hf_trainer_device_args(training.use_cpu)  # the launch's mode on CPU too (gloo): DDP, DeepSpeed, FSDP
    if device_args:
        training = replace(training, **device_args)
    return args, training


def check_model_spec(spec: str) -> tuple[str | None, dict]:
    """(tiny family or None, the model's stage manifest or {}) of ``--model_path``, checked before anything loads:
    a known ``tiny[:family]``, a stage directory (finished, or left incomplete by a failed run, it must pass
    read_manifest) or a model directory."""
    from mmreward.backbones.tiny import tiny_spec_family
    from mmreward.backbones.vlm import check_model_path

    try:
        family = tiny_spec_family(spec)
    except ValueError as err:
        raise UsageError(f"--model_path {spec}: {err}") from err
    if family is not None:
        return family, {}
    path = Path(spec)
    if (path / MANIFEST_NAME).exists() or (path / INCOMPLETE_MARKER).exists():
        return None, read_manifest(path, expect_stage=MODEL_STAGES)
    check_model_path(spec, "--model_path")
    return None, {}


def resolve_model(spec: str, out: Path, state: PartialState) -> tuple[str, dict]:
    """(model directory, its manifest or {}). ``tiny[:family]`` builds a tiny random model once into the output."""
    from mmreward.backbones.tiny import tiny_backbone_once

    family, manifest = check_model_spec(spec)
    if family is not None:
        return str(tiny_backbone_once(family, out, state)), {}
    return spec, manifest


def load_traces(args: VRTSFTArguments) -> tuple[list[EpisodeTrace], dict]:
    """Training traces and a description of where they came from."""
    from vr_thinker.cold_start import TeacherConfig, read_traces, teacher_traces

    data = Path(args.data)
    preset, dims = args.protocol()
    if data.is_dir() and (data / "videos" / f"{args.train_split}.jsonl").is_file():
        records = list(read_records(data / "videos" / f"{args.train_split}.jsonl"))[: args.max_pairs]
        teacher = TeacherConfig(style=args.teacher_style, motion_frames=args.motion_frames, seed=args.teacher_seed)
        return teacher_traces(records, preset, teacher, dims), {"kind": "teacher", "records": len(records)}
    if data.is_dir():
        manifest = read_manifest(data)
        path = data / TRACES_NAME
        if not path.is_file():
            raise MissingInputError(f"--data {data}: stage {manifest.get('stage')!r} wrote no {TRACES_NAME}")
        source = {"kind": "stage", "stage": manifest.get("stage")}
    elif data.is_file():
        path, source = data, {"kind": "import"}
    else:
        raise MissingInputError(f"--data {data}: neither a synthetic data dir, a stage dir nor a trace file")
    traces = read_traces(path, preset, skip_invalid=args.skip_invalid, require_correct=args.require_correct)
    source.update(file=str(path), skipped=[str(e) for e in traces.skipped])
    return list(traces)[: args.max_pairs], source


def eval_records(args: VRTSFTArguments) -> list:
    path = eval_record_file(args.eval_pairs, args.eval_records, args.data, args.eval_split)
    return list(read_records(path))[: args.eval_pairs] if path is not None else []


def evaluate(model, processor, preset: ProtocolPreset, dims: tuple[DimensionSpec, ...], records: list,
             args: VRTSFTArguments, html_path: Path | None = None) -> dict:
    """Greedy judge episodes on held-out records; metrics, and the first episode as HTML when asked."""
    from peft import PeftModel

    from vr_thinker.judge import VRThinkerJudge, score_results
    from vr_thinker.rollout import SamplingConfig
    from vr_thinker.trace_html import write_trace_html

    if isinstance(model, PeftModel):  # untrained adapters are zero: the base model gives the same outputs
        model = model.get_base_model()
    sampling = SamplingConfig(do_sample=False, max_new_tokens=args.eval_max_new_tokens or preset.limits.max_new_tokens)
    judge = VRThinkerJudge(model, processor, preset, dims, sampling, batch_size=args.eval_batch_size)
    start = time.perf_counter()
    results = judge.compare_records(records)
    metrics = score_results(results, records).as_dict()
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if html_path is not None:
        write_trace_html(html_path, results[0].env, title=f"{records[0].id} (held out)", label=records[0].label)
    return metrics


def common_protocol(traces: list[EpisodeTrace], data: str) -> tuple[ProtocolPreset, tuple[DimensionSpec, ...]]:
    """The preset and dimensions every trace shares (the judge must use the ones it was trained with)."""
    from vr_thinker.cold_start import TraceError

    if not traces:
        raise UsageError(f"--data {data}: no training traces")
    preset, dims = traces[0].preset, traces[0].dimensions
    for trace in traces:
        if trace.preset.to_dict() != preset.to_dict() or trace.dimensions != dims:
            raise TraceError(f"uses another protocol or other dimensions than {traces[0].id!r}", data,
                             trace_id=trace.id)
    return preset, dims


@dataclass
class StageInputs:
    """What `check_inputs` read: the model's stage manifest, the training traces and where they came from, their
    protocol, and the held-out records."""

    model_manifest: dict[str, Any]
    traces: list[EpisodeTrace]
    source: dict[str, Any]
    preset: ProtocolPreset
    dims: tuple[DimensionSpec, ...]
    held_out: list
    seconds: float


def check_inputs(args: VRTSFTArguments, training: SFTConfig) -> StageInputs:
    """Everything checked before a model loads or the output folder is touched: ``--model_path``, the output folder,
    the training traces (written by the teacher or read and replayed) and the held-out records."""
    _, model_manifest = check_model_spec(args.model_path)
    check_resume_checkpoint(training.resume_from_checkpoint)
    check_run_dir(training.output_dir, STAGE)
    started = time.perf_counter()
    traces, source = load_traces(args)
    preset, dims = common_protocol(traces, args.data)
    held_out = eval_records(args)
    return StageInputs(model_manifest, traces, source, preset, dims, held_out, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    args, training = parse_args(argv)
    checked = check_inputs(args, training)
    traces, preset, dims, held_out = checked.traces, checked.preset, checked.dims, checked.held_out

    import yaml
    from accelerate import PartialState
    from transformers import set_seed

    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from mmreward.training.distributed import describe_mode, shards_weights
    from vr_thinker.cold_start import replay, write_traces
    from vr_thinker.sft_data import TraceRows, VRThinkerSFTCollator
    from vr_thinker.stage_io import protocol_summary, save_trained_judge
    from vr_thinker.trace_html import write_trace_html
    from vr_thinker.trl_trainers import ModeCheckedSFTTrainer

    out = Path(training.output_dir)
    state = PartialState()
    if state.is_main_process:
        start_run_dir(out, STAGE)
    state.wait_for_everyone()
    set_seed(training.seed)
    model_dir, model_manifest = resolve_model(args.model_path, out, state)
    rows = TraceRows(traces, merge=args.merge_rows)

    # HF Trainer's resume reads checkpoint weights by raw state-dict keys, which for Qwen-VL models saved by
    # transformers 5 do not match the live model's (nothing loads, only a warning): full fine-tuning resumes
    # from the checkpoint's weights through from_pretrained instead (optimizer, scheduler, RNG, step still
    # come from the Trainer's resume). An FSDP checkpoint holds only sharded weights (no model directory), which
    # the Trainer loads itself by the live model's keys.
    checkpoint = training.resume_from_checkpoint
    holds_model = checkpoint is not None and (Path(checkpoint) / "config.json").is_file()
    resume_weights = checkpoint if holds_model and not args.use_lora else None
    model, processor = load_vlm(VLMLoadConfig(
        path=resume_weights or model_dir, dtype=args.dtype, attn_implementation=args.attn_implementation,
        freeze_vision=args.freeze_vision, lora=args.lora(), tool_chat_template=True,
    ))
    metrics: dict = {}
    if held_out and args.eval_before and state.is_main_process:
        metrics["eval_before"] = evaluate(model.to(state.device), processor, preset, dims, held_out, args)

    # Trainer checkpoints and logs go below the stage directory, outside the checksummed files.
    trainer_args = replace(training, output_dir=str(out / "checkpoints"), remove_unused_columns=False,
                           assistant_only_loss=True)
    collator = VRThinkerSFTCollator(processor, max_length=training.max_length)
    trainer = ModeCheckedSFTTrainer(model=model, args=trainer_args, train_dataset=rows.dataset(),
                                    processing_class=processor, data_collator=collator)
    sharded = shards_weights(trainer.accelerator)
    if sharded and args.use_lora:
        raise UsageError("--use_lora: LoRA adapters cannot be merged from sharded weights (ZeRO-3 / FSDP); "
                         "train LoRA under DDP or ZeRO-2")
    result = trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    state.wait_for_everyone()
    full_state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None  # collective: gathers

    if state.is_main_process:
        save_trained_judge(trainer.accelerator.unwrap_model(trainer.model), processor, out, preset, dims,
                           state_dict=full_state)
        write_traces(out / TRACES_NAME, traces)
        write_trace_html(out / "example_trace.html", replay(traces[0]), title=traces[0].id, label=traces[0].label)
        resolved = {**asdict(args), **training.to_dict(), "model_path": model_dir}
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    state.wait_for_everyone()

    if held_out and state.is_main_process:
        judge_model, _ = load_vlm(VLMLoadConfig(path=str(out), dtype=args.dtype))  # what a user loads
        metrics["eval_after"] = evaluate(judge_model.to(state.device), processor, preset, dims, held_out, args,
                                         html_path=out / "eval_trace.html")
    if state.is_main_process:
        calls = Counter(t.num_tool_calls for t in traces)
        metrics.update(
            traces=len(traces),
            rows=len(rows),
            trained_turns=rows.num_turns,
            tool_calls_per_trace={str(k): calls[k] for k in sorted(calls)},
            train_loss=result.training_loss,
            train_steps=result.global_step,
            train_seconds=round(result.metrics.get("train_runtime", 0.0), 2),
            data_seconds=round(checked.seconds, 2),
            source=checked.source,
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        inputs = {"model": model_dir, "model_stage": model_manifest.get("stage"), "data": args.data,
                  "protocol": protocol_summary(preset, dims)}
        finalize_run_dir(out, STAGE, inputs=inputs, metrics=metrics,
                         extra={"distributed": describe_mode(trainer.accelerator)})
        print(summary(out, metrics))
    state.wait_for_everyone()
    return metrics


def summary(out: Path, metrics: dict) -> str:
    """The run's last line: steps, loss, held-out format-valid rate and accuracy before/after, the folder."""
    parts = [f"done: {metrics['train_steps']} steps on {metrics['traces']} traces ({metrics['rows']} rows), "
             f"train loss {metrics['train_loss']:.4f}"]
    for key in ("eval_before", "eval_after"):
        if key in metrics:
            values = metrics[key]
            parts.append(f"{key.replace('_', ' ')}: format-valid {values['format_valid_rate']:.1%}, overall accuracy "
                         f"{values['overall_accuracy']:.1%}")
    return "; ".join(parts) + f"; judge in {out} (load it with VRThinkerJudge.from_pretrained)"


if __name__ == "__main__":
    run(main)
