"""`mmreward.cli.ScriptParser`: settings from a YAML file and from flags reach the settings dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import yaml

from mmreward.cli import ScriptParser
from mmreward.training.config import RewardDataArguments, RewardModelArguments, RewardTrainingConfig

ROOT = Path(__file__).resolve().parents[1]
REWARD_CONFIGS = sorted(p for p in (ROOT / "train" / "configs").glob("*.yaml")
                        if "head" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {}))


@dataclass
class Switches:
    keep: bool = True   # a true default also gets a --no_keep flag
    use: bool = False


def test_a_config_file_sets_bools_either_way_and_flags_override_it(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("keep: false\nuse: true\n", encoding="utf-8")
    (switches,) = ScriptParser([Switches]).parse(["--config", str(config)])
    assert (switches.keep, switches.use) == (False, True)
    (switches,) = ScriptParser([Switches]).parse(["--config", str(config), "--keep", "--use", "false"])
    assert (switches.keep, switches.use) == (True, False)
    (switches,) = ScriptParser([Switches]).parse(["--no_keep"])
    assert switches.keep is False


def test_the_reward_configs_are_found():
    assert {"reward_token_video.yaml", "videoreward_qwen2vl.yaml"} <= {p.name for p in REWARD_CONFIGS}


@pytest.mark.parametrize("path", REWARD_CONFIGS, ids=lambda p: p.name)
def test_every_setting_of_a_reward_config_reaches_its_dataclass(path):
    """What train/reward.py runs is what the file says, setting by setting (a true-default bool set to false in
    a file was once dropped: VideoAlign's recipe then kept its vision tower frozen)."""
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    parsed = ScriptParser((RewardModelArguments, RewardDataArguments, RewardTrainingConfig)).parse(
        ["--config", str(path)])
    values = {f.name: getattr(obj, f.name) for obj in parsed for f in fields(obj)}
    for key, value in settings.items():
        assert values[key] == value, (path.name, key)
