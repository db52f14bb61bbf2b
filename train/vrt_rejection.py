"""VR-Thinker rejection sampling: sample K traces per pair, keep the fully right ones as the next SFT set.

    python train/vrt_rejection.py --config train/configs/vrt_rejection.yaml --model_path runs/vrt_sft \\
        --data runs/synthetic --output_dir runs/vrt_rejection
    accelerate launch --num_processes 8 train/vrt_rejection.py --config ...          # pairs sharded over processes

A trace is kept when every assistant turn is valid, the episode ended with an answer, and every dimension verdict
and the overall verdict match the label (:func:`vr_thinker.rewards.keep_for_rejection_sampling`). Distinct kept
traces of a pair are written (at most ``keep_per_pair`` of them, in sampling order; 0 = all).

Sharding and resuming: process r of n takes pairs r, r + n, ... and generates ``pairs_per_batch`` pairs x K episodes
per batch; sample j of a pair is drawn with a seed of its own, a function of ``--seed``, the pair id and j only
(:func:`pair_seeds`), so a pair's samples do not depend on its batch, the process count or a resume. After each
batch it appends one line per pair (kept traces and per-sample statistics) to ``shards/shard-<r>-of-<n>.jsonl`` and
flushes it. A rerun of the same
command skips every pair id found in any shard file (a line cut by a kill is dropped and redone), so a killed run
resumes where it stopped and, with the same process count, ends with the same output as an uninterrupted one.
``shards/settings.json`` records the model and sampling settings; a rerun with other ones stops instead of mixing.

Output directory: ``traces.jsonl`` (kept traces in the trace format of :mod:`vr_thinker.cold_start`; pass the
directory as ``--data`` to ``train/vrt_sft.py``), ``metrics.json`` (acceptance overall, per dimension and per varied
dimension, format-valid rate, statuses, tool calls per trace for all samples and for kept traces),
``resolved_config.yaml``, ``shards/`` and ``manifest.json`` (stage ``vrt_rejection``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmreward.cli import ScriptParser, run
from mmreward.data.records import PreferenceRecord, RecordError, read_records
from mmreward.errors import UsageError
from mmreward.manifest import check_run_dir
from vr_thinker.presets import DimensionSpec, ProtocolPreset
from vr_thinker.protocol import OVERALL
from vr_thinker.stage_io import read_judge_input, record_file, require_settings

if TYPE_CHECKING:  # torch, accelerate and the rollout engine are imported after parsing: --help stays fast
    from accelerate import PartialState

    from vr_thinker.rollout import RolloutTrace

STAGE = "vrt_rejection"
INPUT_STAGES = ("vrt_sft", "vrt_grpo")
TRACES_NAME = "traces.jsonl"
SHARD_DIR = "shards"


@dataclass
class VRTRejectionArguments:
    """Settings of the rejection-sampling stage."""

    model_path: str = field(default="", metadata={"help": "vrt_sft / vrt_grpo stage output directory"})
    data: str = field(default="", metadata={"help": "synthetic data dir or a record JSONL of video pairs"})
    split: str = field(default="train", metadata={"help": "synthetic split to sample on"})
    max_pairs: int | None = field(default=None, metadata={"help": "use at most this many pairs"})
    output_dir: str = field(default="", metadata={"help": "stage output directory"})
    samples_per_pair: int = field(default=8, metadata={"help": "K: traces sampled per pair"})
    keep_per_pair: int = field(default=0, metadata={"help": "most distinct kept traces per pair (0: all)"})
    pairs_per_batch: int = field(default=4, metadata={"help": "pairs generated together (x K episodes)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (first turn)"})
    later_temperature: float | None = field(default=None, metadata={"help": "sampling temperature of later turns"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "token limit per assistant turn (default: "
                                                                       "the preset's)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    dtype: str = field(default="auto", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    use_cpu: bool = field(default=False, metadata={"help": "run on CPU even with a GPU"})
    torch_threads: int = field(default=0, metadata={"help": "intra-op CPU threads (0: torch's default)"})

    def __post_init__(self) -> None:
        for name in ("samples_per_pair", "pairs_per_batch", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.keep_per_pair < 0:
            raise ValueError("keep_per_pair must be >= 0")


def parse_args(argv: list[str] | None = None) -> VRTRejectionArguments:
    (args,) = ScriptParser((VRTRejectionArguments,), __doc__).parse(argv)
    require_settings(model_path=args.model_path, data=args.data, output_dir=args.output_dir)
    return args


@dataclass
class StageInputs:
    """What `check_inputs` read: the starting judge's manifest and protocol, the record file and its records."""

    model_manifest: dict[str, Any]
    preset: ProtocolPreset
    dims: tuple[DimensionSpec, ...]
    path: Path
    records: list[PreferenceRecord]


def check_inputs(args: VRTRejectionArguments) -> StageInputs:
    """Everything checked before a model loads or the output folder is touched: the judge to sample from (a finished
    stage with its protocol), the records (each with two videos and every judged label), the output folder and, when
    it holds shards of an earlier run, that run's settings."""
    model_manifest, preset, dims = read_judge_input(args.model_path, INPUT_STAGES)
    path = record_file(args.data, args.split)
    records = list(read_records(path))[: args.max_pairs]
    if not records:
        raise RecordError("no records", path)
    for record in records:
        if record.a.video is None or record.b.video is None:
            raise RecordError("needs a video on both sides", path, record_id=record.id)
        missing = [k for k in [*(d.label for d in dims), OVERALL] if k not in record.label]
        if missing:
            raise RecordError(f"has no label for {missing}", path, record_id=record.id)
    check_settings(Path(args.output_dir), args, model_manifest, write=False)
    check_run_dir(args.output_dir, STAGE)
    return StageInputs(model_manifest, preset, dims, path, records)


# ------------------------------------------------------------------------------------------------- shard files


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out / SHARD_DIR / f"shard-{rank:05d}-of-{world:05d}.jsonl"


def read_shard(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a shard file. Lines are written whole and flushed in order, so only the last one can be
    cut (by a kill); it is left out, and with ``repair`` cut off the file so appending continues cleanly."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines, good = [], 0
    for chunk in raw.split(b"\n")[:-1]:  # what follows the last newline is a cut line or nothing
        try:
            lines.append(json.loads(chunk))
        except json.JSONDecodeError:
            break
        good += len(chunk) + 1
    if repair and good != len(raw):
        with path.open("r+b") as handle:
            handle.truncate(good)
    return lines


def done_ids(out: Path) -> set[str]:
    """Pair ids already written by any shard (any process count; others may be appending meanwhile)."""
    root = out / SHARD_DIR
    return {line["id"] for path in sorted(root.glob("shard-*.jsonl")) for line in read_shard(path)} if root.is_dir() \
        else set()


def check_settings(out: Path, args: VRTRejectionArguments, model_manifest: dict[str, Any], write: bool) -> None:
    """Shards may only be resumed by a run with the same model, data and sampling settings: the first run records
    them in ``shards/settings.json`` (``write``: the main process); a later run with others stops instead of mixing
    samples."""
    settings = {
        "model": str(Path(args.model_path).resolve()),
        "model_checksums": model_manifest.get("checksums", {}),
        **{k: getattr(args, k) for k in ("data", "split", "samples_per_pair", "keep_per_pair", "pairs_per_batch",
                                         "temperature", "later_temperature", "top_p", "top_k", "max_new_tokens",
                                         "seed")},
    }
    path = out / SHARD_DIR / "settings.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            raise UsageError(f"{path}: the shards were sampled with other {changed}; use a new --output_dir or "
                             f"delete {out / SHARD_DIR}")
    elif write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


def my_batches(records: Sequence[PreferenceRecord], rank: int, world: int, size: int) -> list[list[PreferenceRecord]]:
    """This process's pairs (every world-th, from rank), in fixed batches of ``size``."""
    mine = list(records)[rank::world]
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def pair_seeds(seed: int, records: Sequence[PreferenceRecord], k: int) -> list[int]:
    """Sampling seeds of ``k`` samples of each record, in record order: sample j of pair ``id`` always gets the same
    seed, whatever batch, process or run samples it."""
    from vr_thinker.rollout import episode_seed

    return [episode_seed(seed, record.id, j) for record in records for j in range(k)]


# ------------------------------------------------------------------------------------------------------ scoring


def sample_stats(trace: RolloutTrace, label: dict[str, int], preset: ProtocolPreset) -> dict[str, Any]:
    """What the statistics need from one sample: kept, format, status, tool calls, which verdicts were right."""
    from vr_thinker.env import EpisodeStatus
    from vr_thinker.rewards import keep_for_rejection_sampling

    answered = trace.status == EpisodeStatus.ANSWERED.value
    return {
        "kept": keep_for_rejection_sampling(trace.outcome, label, preset) and answered,
        "format_valid": trace.outcome.format_valid and answered,
        "status": trace.status,
        "tool_calls": trace.outcome.num_tool_calls,
        "right": {k: trace.outcome.verdicts.get(k) == v for k, v in label.items()},
    }


def pair_line(record: PreferenceRecord, traces: Sequence[RolloutTrace], seeds: Sequence[int], preset: ProtocolPreset,
              dims: Sequence[DimensionSpec], keep_per_pair: int, root: Path, source: str) -> dict[str, Any]:
    """One shard line: the pair's kept traces (trace format, distinct, at most ``keep_per_pair``) and statistics."""
    from vr_thinker.cold_start import EpisodeTrace, trace_to_dict
    from vr_thinker.protocol import label_verdicts

    label_names = {k: record.label[k] for k in [*(d.label for d in dims), OVERALL]}
    label = label_verdicts(label_names, preset, dims)
    samples = [sample_stats(t, label, preset) for t in traces]
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for k, (trace, stats) in enumerate(zip(traces, samples)):
        texts = tuple(turn.text for turn in trace.turns)
        if not stats["kept"] or texts in seen or (keep_per_pair and len(kept) >= keep_per_pair):
            continue
        seen.add(texts)
        episode = EpisodeTrace(
            id=f"{record.id}#{k}", prompt=record.prompt, video_1=Path(record.a.video), video_2=Path(record.b.video),
            turns=list(texts), frames=[list(f) for f in trace.tool_calls], preset=preset, dimensions=tuple(dims),
            label=label_names, seed=seeds[k], source=source,
        )
        kept.append(trace_to_dict(episode, root))
    varies = record.meta.get("varies") if isinstance(record.meta, dict) else None
    return {"id": record.id, "varies": sorted(varies) if isinstance(varies, list) else None, "samples": samples,
            "kept": kept}


def summarise(lines: Sequence[dict[str, Any]], kept: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Acceptance overall / per dimension / per varied dimension, format rate, statuses, tool calls per trace."""
    samples = [s for line in lines for s in line["samples"]]
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to summarise")
    keys = list(samples[0]["right"])
    by_varies: dict[str, list[bool]] = {}
    for line in lines:
        if line["varies"] is not None:
            name = "+".join(line["varies"]) or "none"
            by_varies.setdefault(name, []).extend(s["kept"] for s in line["samples"])
    calls = Counter(s["tool_calls"] for s in samples)
    kept_calls = Counter(len([m for m in t["conversation"] if m["role"] == "tool"]) for t in kept)
    return {
        "pairs": len(lines),
        "samples": n,
        "accepted_samples": sum(s["kept"] for s in samples),
        "acceptance_rate": sum(s["kept"] for s in samples) / n,
        "pairs_with_a_kept_trace": sum(any(s["kept"] for s in line["samples"]) for line in lines) / len(lines),
        "kept_traces": len(kept),
        "format_valid_rate": sum(s["format_valid"] for s in samples) / n,
        "verdict_accuracy": {k: sum(s["right"][k] for s in samples) / n for k in keys},
        "acceptance_by_varied_dimension": {k: sum(v) / len(v) for k, v in sorted(by_varies.items())},
        "statuses": dict(Counter(s["status"] for s in samples)),
        "tool_calls_per_trace": {str(k): calls[k] for k in sorted(calls)},
        "tool_calls_per_kept_trace": {str(k): kept_calls[k] for k in sorted(kept_calls)},
        "mean_tool_calls": sum(s["tool_calls"] for s in samples) / n,
    }


# --------------------------------------------------------------------------------------------------------- main


def sample_shard(args: VRTRejectionArguments, records: list[PreferenceRecord], preset: ProtocolPreset,
                 dims: Sequence[DimensionSpec], state: PartialState, out: Path) -> dict[str, float]:
    """Sample this process's remaining pairs, streaming one line per pair into its shard file; a progress bar (or
    plain lines in a log) counts this process's pairs."""
    from mmreward.backbones.vlm import VLMLoadConfig, load_vlm
    from mmreward.training.progress import Progress
    from vr_thinker.env import VideoPairEnv
    from vr_thinker.rollout import HFRolloutEngine, SamplingConfig

    model, processor = load_vlm(VLMLoadConfig(path=args.model_path, dtype=args.dtype,
                                              attn_implementation=args.attn_implementation, tool_chat_template=True))
    model.to(state.device).eval()
    engine = HFRolloutEngine(model, processor)
    path = shard_path(out, state.process_index, state.num_processes)
    path.parent.mkdir(parents=True, exist_ok=True)
    read_shard(path, repair=True)  # only this process writes this file
    done = done_ids(out)
    source = f"rejection:{Path(args.model_path).name}"
    started, pairs = time.perf_counter(), 0
    batches = my_batches(records, state.process_index, state.num_processes, args.pairs_per_batch)
    mine = sum(len(batch) for batch in batches)
    finished = sum(r.id in done for batch in batches for r in batch)
    progress = Progress(mine, initial=finished, enabled=state.is_main_process, desc="rejection sampling",
                        value_name="accepted")
    accepted, sampled = 0, 0
    for batch in batches:
        todo = [r for r in batch if r.id not in done]
        if not todo:
            continue
        k = args.samples_per_pair
        seeds = pair_seeds(args.seed, todo, k)
        envs = [VideoPairEnv(r.prompt, r.a.video, r.b.video, preset, dims, seed=seed)
                for r, seed in zip([r for r in todo for _ in range(k)], seeds)]
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens or preset.limits.max_new_tokens,
                                  temperature=args.temperature, later_temperature=args.later_temperature,
                                  top_p=args.top_p, top_k=args.top_k)
        traces = engine.rollout(envs, sampling, seeds=seeds)
        with path.open("a", encoding="utf-8") as handle:
            for j, record in enumerate(todo):
                line = pair_line(record, traces[j * k : (j + 1) * k], seeds[j * k : (j + 1) * k], preset, dims,
                                 args.keep_per_pair, out, source)
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                accepted += sum(sample["kept"] for sample in line["samples"])
                sampled += len(line["samples"])
            handle.flush()
            os.fsync(handle.fileno())
        pairs += len(todo)
        finished += len(todo)
        progress.update(finished, accepted / sampled, logged=True)  # "step" = pair here
    progress.close()
    return {"pairs": pairs, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    checked = check_inputs(args)
    model_manifest, preset, dims, path, records = (checked.model_manifest, checked.preset, checked.dims, checked.path,
                                                   checked.records)

    import torch
    import yaml
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from mmreward.manifest import finalize_run_dir, start_run_dir
    from vr_thinker.stage_io import protocol_summary

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    state = PartialState(cpu=args.use_cpu or not torch.cuda.is_available())
    out = Path(args.output_dir)
    if state.is_main_process:
        start_run_dir(out, STAGE)
    state.wait_for_everyone()
    check_settings(out, args, model_manifest, write=state.is_main_process)
    state.wait_for_everyone()
    timing = sample_shard(args, records, preset, dims, state, out)
    timings = gather_object([timing]) if state.num_processes > 1 else [timing]
    state.wait_for_everyone()
    metrics: dict[str, Any] = {}
    if state.is_main_process:
        lines = {line["id"]: line for p in sorted((out / SHARD_DIR).glob("shard-*.jsonl"))
                 for line in read_shard(p, repair=True)}
        missing = [r.id for r in records if r.id not in lines]
        if missing:
            raise RuntimeError(f"no samples for pairs {missing[:5]} (of {len(missing)}); rerun to finish them")
        ordered = [lines[r.id] for r in records]
        kept = [t for line in ordered for t in line["kept"]]
        (out / TRACES_NAME).write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in kept),
                                       encoding="utf-8")
        metrics = summarise(ordered, kept)
        metrics.update(num_processes=state.num_processes, sampling_seconds=timings,
                       pairs_sampled_by_this_run=sum(t["pairs"] for t in timings))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(asdict(args), sort_keys=False))
        inputs = {"model": args.model_path, "model_stage": model_manifest.get("stage"), "data": str(path),
                  "protocol": protocol_summary(preset, dims)}
        finalize_run_dir(out, STAGE, inputs=inputs, metrics=metrics)
        print(summary(out, metrics))
    state.wait_for_everyone()
    return metrics


def summary(out: Path, metrics: dict[str, Any]) -> str:
    """The run's last line: how many samples were kept and where the traces are."""
    return (f"done: {metrics['samples']} samples of {metrics['pairs']} pairs, {metrics['acceptance_rate']:.1%} "
            f"accepted, format-valid {metrics['format_valid_rate']:.1%}; {metrics['kept_traces']} kept traces in "
            f"{out / TRACES_NAME} (train on them with train/vrt_sft.py --data {out})")


if __name__ == "__main__":
    run(main)
