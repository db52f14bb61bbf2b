"""Preset files: loading, inheritance, overrides, validation, round trips and the model-card check."""

import json
import re

import pytest
import yaml

from vr_thinker.presets import PRESET_NAMES, PresetError, ProtocolPreset, fill, load_preset
from vr_thinker.presets.__main__ import main as presets_cli
from vr_thinker.presets.card import check_card


def test_both_released_presets_load_with_their_published_settings():
    assert set(PRESET_NAMES) == {"vr-thinker", "vrthinker"}
    paper = load_preset("vr-thinker")
    assert (paper.frames.per_video, paper.frames.initial_count, paper.frames.max_per_call) == (48, 8, 8)
    assert (paper.limits.max_tool_calls, paper.limits.max_turns, paper.limits.max_new_tokens) == (3, 4, 2048)
    assert (paper.limits.max_context_tokens, paper.limits.memory_window) == (12088, 1)
    grpo = paper.grpo
    assert (grpo.kl_coef, grpo.kl_in, grpo.clip_low, grpo.clip_high) == (0.01, "reward", 0.2, 0.35)
    assert (grpo.loss_aggregation, grpo.loss_constant, grpo.learning_rate) == ("constant", 200.0, 1e-6)
    assert (grpo.temperature, grpo.later_temperature, grpo.top_p, grpo.top_k) == (1.0, 0.9, 0.95, 40)
    assert paper.checkpoint == "qunwang13/vr-thinker" and "experience_maker.py" in paper.sources["code"]
    later = load_preset("vrthinker")
    assert (later.frames.per_video, later.frames.max_per_call, later.limits.max_turns) == (128, 12, 6)
    assert later.prompt.first_turn_media == "images" and later.prompt.image_side == 448
    # Inherited from vr-thinker: tags, rewards, GRPO settings; its own sources only.
    assert later.answer == paper.answer and later.grpo == paper.grpo and later.reward == paper.reward
    assert later.checkpoint == "qunwang13/vrthinker" and "code" in later.sources and "paper" not in later.sources


def test_overrides_are_typed_recorded_and_checked():
    preset = load_preset("vr-thinker", ["frames.per_video=8", "limits.memory_window=null",
                                        'prompt.first_turn="The prompt is: {prompt}"'])
    assert preset.frames.per_video == 8 and preset.limits.memory_window is None
    assert preset.first_turn_text("x", preset.dimensions()) == "The prompt is: x"
    assert preset.overrides == ("frames.per_video=8", "limits.memory_window=null",
                                'prompt.first_turn="The prompt is: {prompt}"')
    with pytest.raises(PresetError, match="has no such field"):
        load_preset("vr-thinker", ["frames.per_vid=8"])
    with pytest.raises(PresetError, match="key=value"):
        load_preset("vr-thinker", ["frames.per_video"])
    with pytest.raises(PresetError, match="initial_rule"):
        load_preset("vr-thinker", ["frames.initial_rule=random"])
    with pytest.raises(PresetError, match="unknown preset"):
        load_preset("vr-thinker-9")


def test_a_users_preset_file_may_build_on_a_released_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "base": "vr-thinker", "frames": {"max_per_call": 4}}))
    mine = load_preset(path)
    assert mine.name == "mine" and mine.frames.max_per_call == 4 and mine.frames.per_video == 48
    assert mine.sources == {} and mine.checkpoint == ""
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"name": "loop", "base": str(loop)}))
    with pytest.raises(PresetError, match="loops"):
        load_preset(loop)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nframes: {per_video: 8}\n")
    with pytest.raises(PresetError, match="not a complete preset"):
        load_preset(broken)


def test_the_resolved_preset_round_trips_through_json():
    preset = load_preset("vrthinker", ["frames.per_video=8"])
    again = ProtocolPreset.from_dict(json.loads(json.dumps(preset.to_dict())))
    assert again == preset and again.overrides == ("frames.per_video=8",)


def test_fill_replaces_only_the_named_placeholders():
    assert fill('{"a": {prompt}} {other}', prompt="x") == '{"a": x} {other}'


def _card(preset: ProtocolPreset, system: str, first_turn_template: str) -> str:
    """A README in the layout of the released card: the system prompt as a string, the first turn as an f-string."""
    dims = preset.dimensions()
    assigns = [f"{name}, {explain} = {d.name!r}, {d.description!r}"
               for name, explain, d in ((f"dim_name_{i}", f"dim_explain_{i}", d) for i, d in enumerate(dims, 1))]
    return ("# card\n```python\nprompt_for_videos = 'A cinematic shot of a waterfall.'\nN = 96\n"
            + "\n".join(assigns) + f"\nprompt_text = \\\nf\"\"\"{first_turn_template}\"\"\"\n"
            + f"sys_prompt = \\\n\"\"\"{system}\"\"\"\n```\n")


def test_check_card_finds_identical_strings_and_the_first_difference(tmp_path):
    preset = load_preset("vr-thinker")
    dims = preset.dimensions()
    lines = "\n".join(f"{i}. **<dim_name_{i}>**: <dim_explain_{i}>" for i in range(1, len(dims) + 1))
    text = fill(preset.prompt.first_turn, prompt="<prompt_for_videos>", dimension_lines=lines, **preset.numbers())
    # As an f-string: literal braces doubled, the card's variables as fields.
    template = re.sub(r"<(prompt_for_videos|dim_name_\d|dim_explain_\d)>", r"{\1}",
                      text.replace("{", "{{").replace("}", "}}"))
    card = _card(preset, preset.system_text(dims), template)
    findings = check_card(preset, card)
    assert [(f.what, f.identical) for f in findings] == [("system (sys_prompt)", True), ("first turn (prompt_text)", True)]
    changed = check_card(preset, card.replace("Iterative reasoning,", "Careful reasoning,"))
    assert not changed[1].identical and changed[1].detail == "-- Careful reasoning,"
    readme = tmp_path / "README.md"
    readme.write_text(card)
    assert presets_cli(["check-card", "vr-thinker", str(readme)]) == 0
    readme.write_text(card.replace("no more than 8 frames", "no more than 12 frames"))
    assert presets_cli(["check-card", "vr-thinker", str(readme)]) == 1
    assert not check_card(preset, "no code here")[0].identical
