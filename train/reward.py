"""Train a reward model on preference pairs: BaseReward's scalar head, VideoAlign's reward tokens or
RewardDance's yes-token (`--head`).

    python train/reward.py --config train/configs/reward_image.yaml            # CPU, tiny model
    python train/reward.py --config train/configs/reward_video.yaml            # videos, BaseReward's scalar head
    python train/reward.py --config train/configs/reward_token_video.yaml      # videos, VideoAlign's reward tokens
    python train/reward.py --config train/configs/rewarddance_image.yaml       # RewardDance's yes-token
    python train/reward.py --config train/configs/reward_image.yaml --backbone /models/Qwen2.5-VL-7B-Instruct \\
        --dtype bfloat16 --learning_rate 3e-6 --batch_size 8 --grad_accum_steps 16
    accelerate launch --config_file train/accelerate/ddp.yaml train/reward.py --config ...   # many GPUs

`--backbone tiny` (or `tiny:qwen2_vl`, `tiny:qwen3_vl`) builds a tiny RANDOM-weight VLM into the
output directory, so the stage runs anywhere; a real run names a local checkpoint directory.
Rerunning the same command resumes from the newest checkpoint in the output directory.

The output directory gets the reward model (`reward_config.json`, `head.safetensors`, `backbone/`
or `adapter/`, processor files; load it with `RewardModel.from_pretrained(dir)`),
`resolved_config.yaml` (every setting; usable as `--config`), `metrics.json` (with the normalisation
statistics the checkpoint stores: the mean and std of each dimension's rewards on the training
pairs, unless `--reward_stats false`), `logs/`
(TensorBoard + `train_log.jsonl`), `checkpoints/` and `manifest.json`. A NaN/inf loss stops the run
with exit code 2, leaves the directory marked incomplete and keeps the last good checkpoint.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from mmreward.cli import ScriptParser, run
from mmreward.errors import UsageError
from mmreward.training.config import RewardDataArguments, RewardModelArguments, RewardTrainingConfig

STAGE = "reward"
EXIT_NON_FINITE = 2


def parse_args(argv: list[str] | None = None):
    parser = ScriptParser((RewardModelArguments, RewardDataArguments, RewardTrainingConfig), __doc__)
    model_args, data_args, train_cfg = parser.parse(argv)
    missing = [name for name, value in (("backbone", model_args.backbone), ("train_file", data_args.train_file),
                                        ("output_dir", train_cfg.output_dir)) if not value]
    if missing:
        raise UsageError(f"missing required setting(s): {', '.join('--' + m for m in missing)}")
    return model_args, data_args, train_cfg


def check_inputs(model_args: RewardModelArguments, data_args: RewardDataArguments,
                 train_cfg: RewardTrainingConfig) -> dict:
    """Everything that can be checked before a model is loaded or the output folder is touched: the
    records files (read and validated), the backbone and the output folder. Returns the records by split."""
    from mmreward.backbones.tiny import tiny_spec_family
    from mmreward.backbones.vlm import check_model_path
    from mmreward.data.records import RecordSet, read_records
    from mmreward.manifest import check_run_dir

    try:
        family = tiny_spec_family(model_args.backbone)
    except ValueError as err:
        raise UsageError(f"--backbone {model_args.backbone}: {err}") from err
    if family is None:
        check_model_path(model_args.backbone, "--backbone")
    check_run_dir(train_cfg.output_dir, STAGE)
    records = {}
    for split, path, limit in (("train", data_args.train_file, data_args.max_train_records),
                               ("val", data_args.val_file, data_args.max_val_records)):
        if path is not None:
            found = read_records(path, skip_invalid=data_args.skip_invalid)
            records[split] = RecordSet(list(found)[:limit], path=found.path) if limit is not None else found
    return records


def resolve_backbone(spec: str, out: Path, accelerator) -> str:
    """A checkpoint path, or a tiny random model built once into `out/tiny_backbone`."""
    from mmreward.backbones.tiny import tiny_backbone_once, tiny_spec_family

    family = tiny_spec_family(spec)
    return spec if family is None else str(tiny_backbone_once(family, out, accelerator))


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, train_cfg = parse_args(argv)
    records = check_inputs(model_args, data_args, train_cfg)

    import torch
    import yaml
    from accelerate.utils import set_seed

    from mmreward.collate import processor_image_size
    from mmreward.data.dataset import PreferenceDataset
    from mmreward.manifest import finalize_run_dir, start_run_dir
    from mmreward.model import RewardModel
    from mmreward.training.distributed import describe_mode
    from mmreward.training.trainer import NonFiniteLossError, RewardTrainer, make_accelerator

    out = Path(train_cfg.output_dir)
    if train_cfg.torch_threads:
        torch.set_num_threads(train_cfg.torch_threads)
    accelerator = make_accelerator(train_cfg, out / "logs")
    if accelerator.is_main_process:
        start_run_dir(out, STAGE)
    accelerator.wait_for_everyone()
    backbone = resolve_backbone(model_args.backbone, out, accelerator)
    set_seed(train_cfg.seed)  # same head initialisation on every process
    model = RewardModel.from_backbone(
        backbone, head=model_args.head, dimensions=model_args.dimensions, head_options=model_args.head_options(),
        tuning=model_args.tuning(), dtype=model_args.dtype, attn_implementation=model_args.attn_implementation,
        settings=model_args.scoring(data_args),
    )
    image_size = processor_image_size(model.processor)  # images resized once, to what the model sees
    train_data = PreferenceDataset(records["train"], data_args.media(), image_size)
    val_data = PreferenceDataset(records["val"], data_args.media(), image_size) if "val" in records else None
    train_cfg.resolve_steps(len(train_data), accelerator.num_processes)  # epochs / warmup_ratio -> steps
    collator = model.head.pair_collator(model.processor, data_args.collate())  # the head decides the prompt
    resolved = {**asdict(model_args), **asdict(data_args), **asdict(train_cfg), "backbone": backbone}
    if accelerator.is_main_process:
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer = RewardTrainer(model, train_data, collator, train_cfg, val_data=val_data, accelerator=accelerator,
                            log_dir=out / "logs")
    try:
        metrics = trainer.train()
    except NonFiniteLossError as err:
        accelerator.print(f"error: {err}", file=sys.stderr)
        accelerator.end_training()
        sys.exit(EXIT_NON_FINITE)
    if model_args.reward_stats:  # collective: every process scores a share of the training pairs
        stats = trainer.reward_statistics(train_data)
        trainer.unwrapped_model().set_reward_stats(stats)
        metrics["reward_stats"] = stats
    state = accelerator.get_state_dict(trainer.model)  # collective: gathers sharded (FSDP / ZeRO-3) weights
    if accelerator.is_main_process:
        trainer.unwrapped_model().save_pretrained(out, state_dict=state)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        inputs = {"backbone": backbone, "train_file": data_args.train_file, "val_file": data_args.val_file}
        finalize_run_dir(out, STAGE, inputs=inputs, metrics=metrics, extra={"distributed": describe_mode(accelerator)})
        accelerator.print(summary(out, metrics))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def summary(out: Path, metrics: dict) -> str:
    """The run's last words: where its outputs are and its main figures."""
    accuracies = ", ".join(f"{k.removeprefix('val/accuracy/')} {v:.3f}" for k, v in metrics.items()
                           if k.startswith("val/accuracy/"))
    return (f"done: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s; held-out accuracy "
            f"{accuracies or 'n/a (no --val_file)'}; reward model in {out} (load it with "
            f"RewardModel.from_pretrained, score files with python -m mmreward.score --model {out})")


if __name__ == "__main__":
    run(main)
