"""Evaluate a reward model, judge or CLIP baseline on preference pairs: predictions, metrics, report.

    python eval/preference.py --model runs/reward_video --data runs/synthetic/videos/test.jsonl \\
        --out runs/eval/reward_video
    python eval/preference.py --model runs/reward_token_video --data runs/synthetic/videos/test.jsonl \\
        --out runs/eval/reward_token_video
    python eval/preference.py --model DIR --data videogen_rewardbench:DATA/videogen-rewardbench.csv \\
        --config eval/configs/videogen_rewardbench.yaml --out runs/eval/vgrb
    accelerate launch --num_processes 4 eval/preference.py --model DIR --data FILE --out OUT   # data-parallel
    python eval/preference.py --judge vr_thinker --model runs/vrt_grpo --data FILE --out OUT

`--data` is a records JSONL (mmreward schema) or `BENCHMARK:SRC` with BENCHMARK one of
`mmreward.data.formats.READERS` (read from the benchmark's own files; its relative media paths
start at `--media_root`, by default SRC's folder or the benchmark's media subfolder of it, e.g.
MJ-Bench-Video's `videos/`: VideoGen-RewardBench's `videos/<model>/...` paths need no flag when
the CSV sits next to `videos/`). Every media file must exist before anything is scored: a run
with missing files stops at once, naming how many and the first few. What scores the pairs:
`--scorer auto` picks a `RewardModel` checkpoint (reward_config.json, or a VideoAlign checkpoint's
model_config.json) or an open_clip model
directory (open_clip_config.json) from `--model`; `--scorer clip` also takes an open_clip name
with `--clip_pretrained` weights; `--judge NAME` loads a judge adapter from `JUDGES`;
`--scorer FILE.py:FUNCTION` calls `FUNCTION(args, device)` for any other `Scorer`.

The output directory holds predictions.jsonl (resumable: rerun the same command after an
interruption and only the missing ids are scored), metrics.json, summary.md, report.html with its
PNG plots, and manifest.json once everything is written.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from typing import TYPE_CHECKING

from mmreward.cli import ScriptParser, module_names, run
from mmreward.errors import MissingInputError, UsageError

if TYPE_CHECKING:  # loaded where they are used: `--help` answers without torch
    from mmreward.data.media import MediaConfig
    from mmreward.data.records import PreferenceRecord
    from mmreward.evaluation.runner import RunnerConfig
    from mmreward.evaluation.scorers import RewardModelScorer, Scorer

HERE = Path(__file__).resolve().parent
# Judges that live outside the library, as "file next to this script:factory".
JUDGES: dict[str, str] = {"vr_thinker": "scorers_vrt.py:build_scorer"}
STAGE = "eval_preference"
BENCHMARKS = module_names("mmreward.data.formats")  # a benchmark's name is its reader module's


@dataclass
class EvalArguments:
    """Options of a preference evaluation (any of them can be set in the --config YAML)."""

    model: str = field(metadata={"help": "reward model checkpoint / judge directory / open_clip directory or name"})
    data: str = field(metadata={"help": "records JSONL, or BENCHMARK:SRC with BENCHMARK one of: " + ", ".join(BENCHMARKS)})
    out: str = field(metadata={"help": "output directory (reused to resume an interrupted run)"})
    scorer: str = field(default="auto", metadata={"help": "auto | reward_model | clip | FILE.py:FUNCTION"})
    judge: str | None = field(default=None, metadata={"help": "named judge adapter: " + ", ".join(sorted(JUDGES))})
    judge_preset: str | None = field(default=None, metadata={
        "help": "VR-Thinker: protocol preset of a released checkpoint (vr-thinker | vrthinker | a file)"})
    judge_dimensions: str | None = field(default=None, metadata={
        "help": "VR-Thinker: dimension set of the preset matching the benchmark's labels"})
    media_root: str | None = field(default=None, metadata={"help": "folder a benchmark's relative media paths start from"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N pairs (smoke runs)"})
    title: str | None = field(default=None, metadata={"help": "report title (default: model and data names)"})
    # batching / running
    batch_size: int = field(default=8, metadata={"help": "pairs per batch"})
    max_batch_cost: float | None = field(default=None, metadata={"help": "per-batch budget in estimated tokens x pairs"})
    bucket_by_length: bool = field(default=True, metadata={"help": "order pairs by estimated length before batching"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding media and collating batches ahead of the model"})
    both_orders: bool = field(default=False, metadata={"help": "also score every pair with its sides swapped"})
    retry_errors: bool = field(default=False, metadata={"help": "rescore pairs whose earlier attempt failed"})
    overwrite: bool = field(default=False, metadata={"help": "discard predictions of a different earlier run in --out"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "leave out bad records of a JSONL file (each reported) instead of stopping at the first one"})
    progress: bool = field(default=True, metadata={"help": "progress bar on the main process"})
    # media and prompt: None = the reward model's own settings (recorded in its checkpoint)
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled per video (default: the model's; CLIP: 8)"})
    fps: float | None = field(default=None, metadata={"help": "sample videos at this rate instead (wins over num_frames)"})
    max_pixels: int | None = field(default=None, metadata={"help": "downscale larger images to this many pixels"})
    video_sampling: str | None = field(default=None, metadata={
        "help": "uniform | qwen (Qwen-VL / VideoAlign frame rules; see mmreward.data.qwen_video)"})
    # model
    backbone: str | None = field(default=None, metadata={
        "help": "base backbone of a LoRA / head-only / VideoAlign checkpoint (default: the one it records)"})
    dtype: str = field(default="auto", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    cpu: bool = field(default=False, metadata={"help": "run on CPU even when a GPU is present"})
    barrier_timeout_minutes: int = field(default=180, metadata={
        "help": "how long processes wait for each other (a fast process waits at the end for the slowest)"})
    normalize: bool | None = field(default=None, metadata={
        "help": "z-normalise rewards with the checkpoint's statistics (default: the checkpoint's choice)"})
    overall: str | None = field(default=None, metadata={
        "help": "'overall' of a model without that dimension: the checkpoint's (sum of its dimensions) or DIMENSION"})
    prompt_template: str | None = field(default=None, metadata={"help": "user text; {prompt} is the record's prompt"})
    system_prompt: str | None = field(default=None, metadata={"help": "system turn before the user turn"})
    pair_form: str | None = field(default=None, metadata={"help": "naive | shared_prefix | auto (see mmreward.collate)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "CLIP weights: a local file (or a tag, downloads)"})
    clip_dimensions: list[str] = field(default_factory=lambda: ["overall"],
                                       metadata={"help": "label dimensions the CLIP similarity is reported under"})
    # metrics
    n_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "interval coverage"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    (args,) = ScriptParser([EvalArguments], __doc__).parse(argv)
    return args


# ------------------------------------------------------------------------------------ data


def load_data(spec: str, media_root: str | None, media_out: Path, skip_invalid: bool = False) -> list[PreferenceRecord]:
    """Records of a JSONL file, or of a benchmark given as `NAME:SRC`."""
    from mmreward.data.formats import READERS, describe_missing_labels, read_benchmark
    from mmreward.data.records import read_records

    name, sep, src = spec.partition(":")
    if sep and name in READERS:
        records = read_benchmark(name, src, media_root=media_root, media_out=media_out)
        missing_labels = describe_missing_labels(records)
        if missing_labels is not None:
            print(f"{name}: {missing_labels}", file=sys.stderr)
        return records
    path = Path(spec)
    if not path.is_file():
        raise MissingInputError(
            f"--data {spec}: no such records file; a benchmark is given as NAME:SRC with NAME one of {sorted(READERS)}"
        )
    if media_root is not None:
        raise UsageError("--media_root applies to benchmarks (NAME:SRC); records resolve media against their JSONL folder")
    records = read_records(path, skip_invalid=skip_invalid)
    if records.skipped:
        print(f"warning: left out {len(records.skipped)} bad records of {path}; the first: {records.skipped[0]}",
              file=sys.stderr)
    return list(records)


# ------------------------------------------------------------------------------------ scorers


def _load_factory(spec: str, base: Path | None = None) -> Callable[..., Scorer]:
    """`FILE.py:FUNCTION` -> the function (FILE relative to `base`, default the working directory, unless absolute)."""
    file, sep, func = spec.rpartition(":")
    path = Path(file) if Path(file).is_absolute() else (base or Path.cwd()) / file
    if not sep or not func or not path.is_file():
        raise UsageError(f"scorer factory {spec!r}: expected FILE.py:FUNCTION with an existing file ({path})")
    name = f"_scorer_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    module_spec.loader.exec_module(module)
    if not hasattr(module, func):
        raise UsageError(f"scorer factory {spec!r}: {path} defines no {func!r}")
    return getattr(module, func)


def _check_model_dir(model: Path) -> None:
    """A stage output directory must be finished and unedited before it is evaluated."""
    from mmreward.manifest import INCOMPLETE_MARKER, MANIFEST_NAME, read_manifest

    if (model / MANIFEST_NAME).exists() or (model / INCOMPLETE_MARKER).exists():
        read_manifest(model)


def _checked(scorer: Any, spec: str) -> Scorer:
    """A factory's scorer, refused with the names of the `Scorer` methods it lacks."""
    from mmreward.evaluation.scorers import Scorer

    # The protocol's own attributes and methods, so the check follows the protocol when it changes.
    members = [*Scorer.__annotations__,
               *(name for name, value in vars(Scorer).items() if callable(value) and not name.startswith("_"))]
    missing = [name for name in members if not hasattr(scorer, name)]
    if missing:
        raise TypeError(f"scorer factory {spec!r} returned a {type(scorer).__name__} without {missing} "
                        "(subclass mmreward.evaluation.BaseScorer for the defaults)")
    return scorer


def _media(args: EvalArguments, base: MediaConfig) -> MediaConfig:
    """`base` with the media options the command line sets."""
    given = {name: getattr(args, name) for name in ("num_frames", "fps", "max_pixels", "video_sampling")
             if getattr(args, name) is not None}
    if "fps" in given and "num_frames" not in given:
        given["num_frames"] = None
    return replace(base, **given)


def _reward_model_scorer(args: EvalArguments, model: Path, device: Any) -> RewardModelScorer:
    """A reward model scored as its checkpoint says, except for what the command line overrides."""
    from mmreward.evaluation.scorers import RewardModelScorer
    from mmreward.model import RewardModel

    reward_model = RewardModel.from_pretrained(model, backbone_path=args.backbone, dtype=args.dtype).to(device)
    settings = reward_model.settings
    collate = replace(settings.collate, **{name: getattr(args, name) for name in
                                           ("prompt_template", "system_prompt", "pair_form")
                                           if getattr(args, name) is not None})
    return RewardModelScorer(reward_model, collate=collate, media=_media(args, settings.media),
                             normalize=args.normalize, overall=args.overall, source=str(model))


def _is_reward_model(model: Path) -> bool:
    from mmreward.videoalign import is_videoalign_checkpoint

    return (model / "reward_config.json").is_file() or is_videoalign_checkpoint(model)


def build_scorer(args: EvalArguments, device: Any) -> Scorer:
    """The scorer that `args` asks for (see the module docstring)."""
    from mmreward.data.media import MediaConfig
    from mmreward.evaluation.scorers import ClipScorer

    model = Path(args.model)
    if model.is_dir():
        _check_model_dir(model)
    if args.judge is not None:
        if args.scorer != "auto":
            raise UsageError("give --judge or --scorer, not both")
        if args.judge not in JUDGES:
            raise UsageError(f"--judge {args.judge}: unknown; known judges: {sorted(JUDGES)}")
        return _load_factory(JUDGES[args.judge], HERE)(args, device)
    kind = args.scorer
    if kind == "auto":
        if _is_reward_model(model):
            kind = "reward_model"
        elif (model / "open_clip_config.json").is_file() or args.clip_pretrained is not None:
            kind = "clip"
        else:
            raise UsageError(
                f"--model {args.model}: cannot tell what it is (no reward_config.json, VideoAlign model_config.json "
                "or open_clip_config.json); pass --scorer reward_model | clip | FILE.py:FUNCTION, or --judge NAME"
            )
    if kind == "reward_model":
        return _reward_model_scorer(args, model, device)
    if kind == "clip":
        return ClipScorer.from_pretrained(args.model, args.clip_pretrained, device=str(device),
                                          media=_media(args, MediaConfig()), dimensions=args.clip_dimensions)
    if ":" in kind:
        return _checked(_load_factory(kind)(args, device), kind)
    raise UsageError(f"--scorer {kind}: expected auto, reward_model, clip or FILE.py:FUNCTION")


# ------------------------------------------------------------------------------------ main


def _runner_config(args: EvalArguments) -> RunnerConfig:
    from mmreward.evaluation.runner import RunnerConfig

    return RunnerConfig(batch_size=args.batch_size, max_batch_cost=args.max_batch_cost,
                        bucket_by_length=args.bucket_by_length, num_workers=args.num_workers,
                        both_orders=args.both_orders, retry_errors=args.retry_errors, progress=args.progress)


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers a later stage or compare.py reads from manifest.json."""
    out: dict[str, Any] = {"pairs": metrics["counts"]["pairs"], "errors": metrics["counts"]["errors"]}
    for dim, m in metrics["dimensions"].items():
        out[f"{dim}/accuracy"] = m["accuracy"]["estimate"] if m["accuracy"] else None
        out[f"{dim}/accuracy_with_ties"] = m["accuracy_with_ties"]["estimate"]
    return out


def make_state(args: EvalArguments) -> Any:
    """The accelerate process state (reads the `accelerate launch` environment)."""
    from datetime import timedelta

    from accelerate import PartialState

    # torch.distributed's default barrier timeout (10 min for NCCL) is shorter than a long evaluation's tail.
    return PartialState(cpu=args.cpu, timeout=timedelta(minutes=args.barrier_timeout_minutes))


def check_inputs(args: EvalArguments, stage: str = STAGE) -> None:
    """What can be checked before data are read or a model loaded: the output folder and the model."""
    from mmreward.manifest import check_run_dir

    check_run_dir(args.out, stage, "--out")
    model = Path(args.model)
    if model.is_dir():
        _check_model_dir(model)
    elif args.judge is None and args.scorer in ("auto", "reward_model") and args.clip_pretrained is None:
        raise UsageError(f"--model {args.model}: no such directory")


def main(argv: list[str] | None = None, state: Any | None = None) -> dict[str, Any] | None:
    """Run the evaluation; returns the metrics on the main process (None on the others).

    state: an accelerate `PartialState` / `Accelerator` (default: `make_state(args)`).
    """
    args = parse_args(argv)
    check_inputs(args)

    from mmreward.data.records import require_media
    from mmreward.evaluation.report import compute_metrics, write_report
    from mmreward.evaluation.runner import check_run_config, load_predictions, run_identity, run_predictions
    from mmreward.manifest import finalize_run_dir, start_run_dir

    state = make_state(args) if state is None else state
    out = Path(args.out)
    # Benchmarks with embedded images write them out; one folder per process avoids two writers.
    records = load_data(args.data, args.media_root, out / "media" / f"rank{state.process_index}", args.skip_invalid)
    if args.limit is not None:
        records = records[: args.limit]
    require_media(records)  # fail now, not pair by pair after hours of scoring
    scorer = build_scorer(args, state.device)
    cfg = _runner_config(args)
    identity = {"model": args.model, "data": args.data, "limit": args.limit}
    if state.is_main_process:
        if not args.overwrite:  # refuse another evaluation's folder before marking it incomplete
            check_run_config(out, run_identity(scorer, cfg, identity), flag="--out")
        start_run_dir(out, STAGE)
    state.wait_for_everyone()
    start = time.perf_counter()
    stats = run_predictions(records, scorer, out, cfg, state=state, identity=identity, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    if not state.is_main_process:
        return None

    rows = load_predictions(out)
    metrics = compute_metrics(rows, n_bootstrap=args.n_bootstrap, confidence=args.confidence, seed=args.seed)
    info = {
        "model": args.model,
        "data": args.data,
        "scorer": scorer.name,
        "processes": state.num_processes,
        "pairs scored in this run": len(rows) - stats.already_done,
        "seconds (this run)": round(seconds, 2),
        "pairs/s (main process)": round(stats.pairs_per_second, 3),
    }
    data_name = Path(args.data.split(":", 1)[-1]).name
    title = args.title or f"{scorer.name}: {Path(args.model).name} on {data_name}"
    write_report(out, rows, metrics, title, info)
    finalize_run_dir(out, STAGE, inputs={"model": args.model, "data": args.data}, metrics=_headline_metrics(metrics),
                     extra={"args": asdict(args), "scorer": scorer.describe()})
    headline = _headline_metrics(metrics)
    accuracy = headline.get("overall/accuracy")
    print(f"done: {len(rows)} pairs ({headline['errors']} errors); overall accuracy w/o ties "
          f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}; wrote {out} (report.html, metrics.json, "
          "predictions.jsonl)", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    run(main)
