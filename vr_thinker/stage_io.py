"""What the VR-Thinker stage scripts (``train/vrt_*.py``) share: the protocol preset setting, required settings,
record files, the judge a stage starts from (checked through its manifest) and saving the trained judge.

One place for these keeps the stages' command lines and error messages the same: a setting is missing, a data path
holds no records, or a model directory is not a finished VR-Thinker stage. Every such problem is one of the project's
errors (``mmreward.errors``) naming the flag, which ``mmreward.cli.run`` prints as one line.

The argument dataclasses and checks import neither torch nor transformers (a stage's ``--help`` answers at once); what
needs them (the judge config, LoRA, saving) imports them when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmreward.errors import MissingInputError, UsageError
from mmreward.manifest import read_manifest
from vr_thinker.presets import (
    PRESET_NAMES,
    DimensionSpec,
    PresetError,
    ProtocolPreset,
    load_preset,
)

if TYPE_CHECKING:
    from mmreward.backbones.vlm import LoRASettings


@dataclass
class PresetArguments:
    """The protocol fields of a stage's arguments. preset: a preset name (``vr-thinker``, ``vrthinker``) or file;
    preset_overrides: dotted ``key=value`` changes recorded with the run (e.g. ``frames.per_video=8`` for tiny
    CPU runs); dimensions: a dimension set of the preset (default: its default set)."""

    preset: str = field(default="vr-thinker", metadata={"help": f"protocol preset: a name ({', '.join(PRESET_NAMES)}) "
                                                                "or a YAML file"})
    preset_overrides: list[str] = field(default_factory=list, metadata={"help": "preset changes, key=value"})
    dimensions: str | None = field(default=None, metadata={"help": "dimension set of the preset"})

    def protocol(self) -> tuple[ProtocolPreset, tuple[DimensionSpec, ...]]:
        """The preset and dimensions; a UsageError naming ``--preset`` when they cannot be used."""
        from vr_thinker.judge import resolve_dimensions

        try:
            preset = load_preset(self.preset, self.preset_overrides)
            return preset, resolve_dimensions(preset, self.dimensions)
        except PresetError as err:
            raise UsageError(f"--preset {self.preset}: {err}") from err


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
        from mmreward.backbones.vlm import LoRASettings

        return LoRASettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout) if self.use_lora else None


def require_settings(**values: Any) -> None:
    """A UsageError naming every setting (``--name``) whose value is empty."""
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise UsageError(f"missing required setting(s): {', '.join('--' + m for m in missing)}")


def check_resume_checkpoint(checkpoint: str | None) -> None:
    """A MissingInputError naming ``--resume_from_checkpoint`` when it names no folder (TRL stages)."""
    if checkpoint is not None and not Path(checkpoint).is_dir():
        raise MissingInputError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder")


def record_file(data: str, split: str) -> Path:
    """A record JSONL, or the split's video records of a synthetic data directory (``videos/<split>.jsonl``)."""
    path = Path(data)
    if path.is_dir():
        path = path / "videos" / f"{split}.jsonl"
    if not path.is_file():
        raise MissingInputError(f"--data {data}: no record file {path}")
    return path


def eval_record_file(eval_pairs: int, eval_records: str | None, data: str, eval_split: str) -> Path | None:
    """The fixed eval set's record file: ``eval_records`` if given, else the synthetic directory's ``eval_split``;
    None when ``eval_pairs`` is 0."""
    if eval_pairs <= 0:
        return None
    if eval_records is not None:
        if not Path(eval_records).is_file():
            raise MissingInputError(f"--eval_records {eval_records}: no such file")
        return Path(eval_records)
    path = Path(data) / "videos" / f"{eval_split}.jsonl"
    if not path.is_file():
        raise UsageError(f"--eval_pairs needs --eval_records (no synthetic split at {path})")
    return path


def read_judge_input(model_path: str, stages: Sequence[str]
                     ) -> tuple[dict[str, Any], ProtocolPreset, tuple[DimensionSpec, ...]]:
    """(manifest, preset, dimensions) of a finished stage directory of one of ``stages`` that a stage continues
    from; a MissingInputError / RunDirError naming ``--model_path`` when it is missing, unfinished, of another stage
    or has no judge config."""
    from vr_thinker.judge import JUDGE_CONFIG_NAME, load_judge_config

    if not Path(model_path).is_dir():
        raise MissingInputError(f"--model_path {model_path}: no such directory (a {' / '.join(stages)} stage output)")
    manifest = read_manifest(model_path, expect_stage=tuple(stages))
    saved = load_judge_config(model_path)
    if saved is None:
        raise MissingInputError(f"--model_path {model_path}: no {JUDGE_CONFIG_NAME} (protocol of the model)")
    preset, dims = saved
    return manifest, preset, dims


def save_trained_judge(model: Any, processor: Any, out: Path, preset: ProtocolPreset,
                       dims: Sequence[DimensionSpec], state_dict: dict[str, Any] | None = None) -> Any:
    """Save a trained judge as ``VRThinkerJudge.from_pretrained`` loads it (LoRA adapters merged into the weights,
    processor, protocol preset); returns the saved (merged) model.

    state_dict: the full weights when the model's parameters are sharded (ZeRO-3, FSDP:
    ``accelerator.get_state_dict(model)``, gathered on every process); a sharded LoRA model cannot be merged here.
    """
    from peft import PeftModel

    from vr_thinker.judge import save_judge_config

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
