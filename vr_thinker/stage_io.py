"""What the VR-Thinker stage scripts (``train/vrt_*.py``) share: the protocol preset setting, required settings,
record files, the judge a stage starts from (checked through its manifest) and saving the trained judge.

One place for these keeps the stages' command lines and error messages the same: a setting is missing, a data path
holds no records, or a model directory is not a finished VR-Thinker stage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel

from mmreward.backbones.vlm import LoRASettings
from mmreward.manifest import read_manifest
from vr_thinker.judge import JUDGE_CONFIG_NAME, load_judge_config, resolve_dimensions, save_judge_config
from vr_thinker.presets import DimensionSpec, PresetError, ProtocolPreset, load_preset


@dataclass
class PresetArguments:
    """The protocol fields of a stage's arguments. preset: a preset name (``vr-thinker``, ``vrthinker``) or file;
    preset_overrides: dotted ``key=value`` changes recorded with the run (e.g. ``frames.per_video=8`` for tiny
    CPU runs); dimensions: a dimension set of the preset (default: its default set)."""

    preset: str = field(default="vr-thinker", metadata={"help": "protocol preset name or YAML file"})
    preset_overrides: list[str] = field(default_factory=list, metadata={"help": "preset changes, key=value"})
    dimensions: str | None = field(default=None, metadata={"help": "dimension set of the preset"})

    def protocol(self) -> tuple[ProtocolPreset, tuple[DimensionSpec, ...]]:
        """The preset and dimensions; stops with the problem when they cannot be used."""
        try:
            preset = load_preset(self.preset, self.preset_overrides)
            return preset, resolve_dimensions(preset, self.dimensions)
        except PresetError as err:
            raise SystemExit(f"--preset {self.preset}: {err}") from err


@dataclass
class LoRAArguments:
    """LoRA fields of a stage's arguments (a stage dataclass inherits them; ``lora_dropout``'s default may be
    redeclared). use_lora: train adapters, merged into the weights on save; lora_r / lora_alpha / lora_dropout: the
    adapters' rank, scale and dropout."""

    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters (merged on save)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})

    def lora(self) -> LoRASettings | None:
        """The adapter settings for ``VLMLoadConfig.lora`` (None without ``use_lora``)."""
        return LoRASettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout) if self.use_lora else None


def require_settings(parser: argparse.ArgumentParser, **values: Any) -> None:
    """Stop with the parser's usage error naming every setting (``--name``) whose value is empty."""
    missing = [name for name, value in values.items() if not value]
    if missing:
        parser.error(f"missing required setting(s): {', '.join('--' + m for m in missing)}")


def record_file(data: str, split: str) -> Path:
    """A record JSONL, or the split's video records of a synthetic data directory (``videos/<split>.jsonl``)."""
    path = Path(data)
    if path.is_dir():
        path = path / "videos" / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--data {data}: no record file {path}")
    return path


def eval_record_file(eval_pairs: int, eval_records: str | None, data: str, eval_split: str) -> Path | None:
    """The fixed eval set's record file: ``eval_records`` if given, else the synthetic directory's ``eval_split``;
    None when ``eval_pairs`` is 0."""
    if eval_pairs <= 0:
        return None
    if eval_records is not None:
        return Path(eval_records)
    path = Path(data) / "videos" / f"{eval_split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--eval_pairs needs --eval_records (no synthetic split at {path})")
    return path


def read_judge_input(model_path: str, stages: Sequence[str]
                     ) -> tuple[dict[str, Any], ProtocolPreset, tuple[DimensionSpec, ...]]:
    """(manifest, preset, dimensions) of a finished stage directory of one of ``stages`` that a stage continues
    from; stops when the directory is unfinished, of another stage or has no judge config."""
    manifest = read_manifest(model_path, expect_stage=tuple(stages))
    saved = load_judge_config(model_path)
    if saved is None:
        raise SystemExit(f"--model_path {model_path}: no {JUDGE_CONFIG_NAME} (protocol of the model)")
    preset, dims = saved
    return manifest, preset, dims


def save_trained_judge(model: Any, processor: Any, out: Path, preset: ProtocolPreset,
                       dims: Sequence[DimensionSpec], state_dict: dict[str, Any] | None = None) -> Any:
    """Save a trained judge as ``VRThinkerJudge.from_pretrained`` loads it (LoRA adapters merged into the weights,
    processor, protocol preset); returns the saved (merged) model.

    state_dict: the full weights when the model's parameters are sharded (ZeRO-3, FSDP:
    ``accelerator.get_state_dict(model)``, gathered on every process); a sharded LoRA model cannot be merged here.
    """
    if isinstance(model, PeftModel):
        if state_dict is not None:
            raise ValueError("a LoRA model with sharded weights (ZeRO-3 / FSDP) cannot be merged and saved; "
                             "train LoRA under DDP or ZeRO-2")
        model = model.merge_and_unload()
    model.save_pretrained(out, state_dict=state_dict)
    processor.save_pretrained(out)
    save_judge_config(out, preset, dims)
    return model


def protocol_summary(preset: ProtocolPreset, dims: Sequence[DimensionSpec]) -> dict[str, Any]:
    """What a manifest records of the protocol: the preset's name, its overrides and the judged dimensions."""
    return {"preset": preset.name, "preset_overrides": list(preset.overrides),
            "dimensions": [d.key for d in dims], "checkpoint": preset.checkpoint}
