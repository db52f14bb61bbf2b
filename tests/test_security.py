"""Security: weights from safetensors only, no code run from pickles, no remote code unless asked, model output
never executed.

Every planted file here carries a pickle trap: unpickling it creates a marker file, so "the code did not run" is
checked directly (and `test_the_trap_fires_when_unpickled` shows the trap works). Media paths confined to the
dataset root are tested in tests/data/test_records.py (`test_field_validation`: `../` escapes;
`test_symlink_pointing_outside_is_an_escape`); truncated/edited stage outputs in tests/test_manifest.py and the
stage tests (e.g. tests/train/test_vrt_rejection.py::test_refuses_an_unfinished_or_edited_model_dir); SIGKILL and
resume in each stage's test file.
"""

import ast
import base64
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import get_scheduler

from mmreward.backbones.clip import CLIPLoadError, build_tiny_clip, load_clip
from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.backbones.vlm import load_vlm
from mmreward.model import RewardModel, TuningConfig
from mmreward.training.trainer import (
    CheckpointError,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint_atomically,
)
from vr_thinker.env import VideoPairEnv
from vr_thinker.judge import VRThinkerJudge
from vr_thinker.presets import load_preset
from vr_thinker.protocol import ProblemCode, TurnState, check_turn

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "tests" / "fixtures" / "bad" / "videos" / "ok.mp4"


class Trap:
    """Unpickling this object calls `open(marker, "w")`: the marker file appears iff pickle ran the payload."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> Path:
    """Write a torch pickle at `path` whose payload would create `marker`."""
    torch.save({"weight": torch.zeros(2), "payload": Trap(marker)}, path)
    return path


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), num_layers=1)


def pickle_only_copy(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of a model directory whose safetensors weights are replaced by a trapped pickle."""
    shutil.copytree(src, dst)
    for weights in dst.glob("*.safetensors"):
        weights.unlink()
    plant(dst / "pytorch_model.bin", marker)
    return dst


def test_the_trap_fires_when_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    torch.load(plant(tmp_path / "x.bin", marker), weights_only=False)
    assert marker.exists()  # what every other test checks does not happen


# ------------------------------------------------------------------------------------------- weights loading


def test_vlm_loaders_refuse_a_pickle_only_checkpoint(tiny, tmp_path):
    marker = tmp_path / "PWNED"
    bad = pickle_only_copy(tiny, tmp_path / "bad", marker)
    with pytest.raises(ValueError, match=r"bad: model weights only as pickle files \['pytorch_model.bin'\]"):
        load_vlm(bad)
    with pytest.raises(ValueError, match="only as pickle files"):
        VRThinkerJudge.from_pretrained(bad, preset="vr-thinker")
    assert not marker.exists()


def test_reward_model_refuses_pickle_backbone_or_adapter(tiny, tmp_path):
    marker = tmp_path / "PWNED"
    full = RewardModel.from_backbone(tiny, tuning=TuningConfig(mode="full"), dtype="float32")
    full_dir = full.save_pretrained(tmp_path / "full")
    RewardModel.from_pretrained(full_dir)  # loads as saved
    for weights in (full_dir / "backbone").glob("*.safetensors"):
        weights.unlink()
    plant(full_dir / "backbone" / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=r"backbone: model weights only as pickle files"):
        RewardModel.from_pretrained(full_dir)

    lora = RewardModel.from_backbone(tiny, tuning=TuningConfig(mode="lora", lora_r=2), dtype="float32")
    lora_dir = lora.save_pretrained(tmp_path / "lora")
    adapter = lora_dir / "adapter"
    (adapter / "adapter_model.safetensors").unlink()
    plant(adapter / "adapter_model.bin", marker)
    with pytest.raises(ValueError, match=r"adapter: LoRA adapter weights only as pickle files"):
        RewardModel.from_pretrained(lora_dir)
    assert not marker.exists()


def test_clip_pickle_weights_are_read_weights_only(tmp_path):
    """open_clip documents .bin weights files (e.g. ViT-bigG-14's): they are read with weights_only=True."""
    marker = tmp_path / "PWNED"
    tiny_clip = build_tiny_clip(tmp_path / "clip")
    trapped = plant(tmp_path / "open_clip_pytorch_model.bin", marker)
    with pytest.raises(CLIPLoadError, match=r"open_clip_pytorch_model.bin: refused a weights pickle"):
        load_clip(tiny_clip, pretrained=trapped)
    # The same in a model directory that holds only the pickle.
    (tiny_clip / "open_clip_model.safetensors").unlink()
    shutil.copy(trapped, tiny_clip / "open_clip_pytorch_model.bin")
    with pytest.raises(CLIPLoadError, match=r"clip: refused a weights pickle"):
        load_clip(tiny_clip)
    assert not marker.exists()


def test_auto_map_custom_code_is_not_run(tiny, tmp_path, monkeypatch):
    """A checkpoint whose config points the Auto classes at its own Python file: load_vlm (trust_remote_code
    off by default) loads the built-in class and never imports the file; asking for remote code would."""
    import transformers.dynamic_module_utils as dynamic

    marker = tmp_path / "PWNED"
    repo = tmp_path / "remote"
    shutil.copytree(tiny, repo)
    (repo / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration\n"
        # Own subclasses: loading remote code registers the classes with the Auto API (class state).
        "class EvilConfig(Qwen2_5_VLConfig):\n    pass\n"
        "class EvilModel(Qwen2_5_VLForConditionalGeneration):\n    pass\n"
    )
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel"}
    (repo / "config.json").write_text(json.dumps(config))
    model, processor = load_vlm(repo)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and processor is not None
    assert not marker.exists()

    from transformers import AutoConfig

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep the copy out of ~/.cache
    config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
    assert type(config).__name__ == "EvilConfig" and marker.exists()  # only an explicit trust_remote_code runs it
    from transformers import Qwen2_5_VLConfig

    assert Qwen2_5_VLConfig._auto_class is None  # the built-in class was left alone for the rest of the suite


# ------------------------------------------------------------------------------------- training checkpoints


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def _registered(acc: Accelerator) -> tuple[torch.nn.Module, TrainerState, torch.optim.lr_scheduler.LRScheduler]:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    model, optimizer = acc.prepare(model, optimizer)
    state = TrainerState()
    acc.register_for_checkpointing(scheduler, state)
    return model, state, scheduler


def test_training_checkpoint_with_a_planted_pickle_is_refused(accelerator, tmp_path):
    """accelerate reads registered objects (scheduler, trainer state) with weights_only=False; load_checkpoint,
    which the reward trainer and the GRPO loop resume through, refuses a file that names any code."""
    model, state, scheduler = _registered(accelerator)
    state.step = 3
    model(torch.ones(1, 3)).sum().backward()
    accelerator._optimizers[0].step()
    scheduler.step()
    path = save_checkpoint_atomically(accelerator, tmp_path, step=3, save_total_limit=2)
    assert latest_checkpoint(tmp_path) == path
    state.step = 0
    load_checkpoint(accelerator, path)  # a genuine checkpoint loads
    assert state.step == 3 and scheduler.last_epoch == 1

    marker = tmp_path / "PWNED"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        original = (path / name).read_bytes()
        plant(path / name, marker)
        with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: refused to load"):
            load_checkpoint(accelerator, path)
        assert not marker.exists()
        (path / name).write_bytes(original)

    (path / "custom_checkpoint_1.pkl").write_bytes((path / "custom_checkpoint_1.pkl").read_bytes()[:20])
    with pytest.raises(CheckpointError, match="custom_checkpoint_1.pkl: refused to load"):
        load_checkpoint(accelerator, path)  # truncated

    # accelerate reads RNG states and optimizer with weights_only=True itself: a planted one never runs.
    plant(path / "random_states_0.pkl", marker)
    plant(path / "optimizer.bin", marker)
    with pytest.raises(Exception):
        accelerator.load_state(str(path))
    assert not marker.exists()


def test_planted_deepspeed_engine_file_is_refused(accelerator, tmp_path):
    """DeepSpeed reads its engine files (model / ZeRO optimizer states) with weights_only=False: load_checkpoint
    refuses one naming code before anything is loaded, and lets DeepSpeed's own classes through."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    _registered(accelerator)
    path = save_checkpoint_atomically(accelerator, tmp_path, step=1, save_total_limit=1)
    engine = path / "pytorch_model"
    engine.mkdir()
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.weights}, engine / "optim_states.pt")
    load_checkpoint(accelerator, path)  # DeepSpeed's own classes pass
    marker = tmp_path / "PWNED"
    plant(engine / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_0_mp_rank_00_optim_states.pt: refused to load.*io.open"):
        load_checkpoint(accelerator, path)
    assert not marker.exists()


def test_accelerate_alone_would_run_the_planted_pickle(accelerator, tmp_path):
    """Why load_checkpoint exists: plain `load_state` unpickles registered objects with weights_only=False."""
    _registered(accelerator)
    path = save_checkpoint_atomically(accelerator, tmp_path, step=1, save_total_limit=1)
    marker = tmp_path / "PWNED"
    plant(path / "custom_checkpoint_1.pkl", marker)
    with pytest.raises(Exception):
        accelerator.load_state(str(path))  # the payload is not a state dict, after it ran
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- SAC checkpoints


@pytest.fixture
def sac():
    """A SAC on Pendulum after 20 steps, and a factory for fresh ones of the same config."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    def build():
        return SAC("MlpPolicy", gym.make("Pendulum-v1"), buffer_size=100, learning_starts=5, batch_size=8,
                   policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")

    model = build()
    model.learn(20)
    return model, build


def _rewrite_zip_data(path: Path, edit) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    edit(data)
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in entries.items():
            archive.writestr(name, blob)


def test_sac_checkpoint_round_trip_and_planted_pickles(sac, tmp_path):
    from stable_baselines3 import SAC

    from vlm_rm.sac_checkpoint import SACCheckpointError, load_sac_checkpoint, save_sac_checkpoint

    model, build = sac
    zip_path = save_sac_checkpoint(model, tmp_path, with_buffer=True)
    buffer_path = tmp_path / "sac_replay_buffer_20_steps.npz"
    assert zip_path.name == "sac_20_steps.zip" and buffer_path.is_file()
    loaded = load_sac_checkpoint(zip_path, build(), buffer_path)
    assert loaded.num_timesteps == 20 and loaded.replay_buffer.size() == 20
    assert np.array_equal(loaded.replay_buffer.observations[:20], model.replay_buffer.observations[:20])
    for name, value in model.policy.state_dict().items():
        assert torch.equal(loaded.policy.state_dict()[name], value), name

    marker = tmp_path / "PWNED"
    trap = {":type:": "<class 'x'>", ":serialized:": base64.b64encode(pickle.dumps(Trap(marker))).decode()}
    _rewrite_zip_data(zip_path, lambda data: data.update(observation_space=trap))
    assert load_sac_checkpoint(zip_path, build()).num_timesteps == 20  # the entry comes from the fresh model
    assert not marker.exists()
    _rewrite_zip_data(zip_path, lambda data: data.update(evil=trap))
    with pytest.raises(SACCheckpointError, match=r"pickled entries \['evil'\] have no counterpart"):
        load_sac_checkpoint(zip_path, build())
    assert not marker.exists()
    with pytest.raises(Exception):
        SAC.load(zip_path)  # SB3 alone unpickles the planted entries (then fails on the junk object)
    assert marker.exists()

    marker.unlink()
    np.savez(buffer_path, observations=np.array([Trap(marker)], dtype=object), pos=0, full=False)
    with pytest.raises(SACCheckpointError, match="not a readable replay buffer"):
        load_sac_checkpoint(save_sac_checkpoint(model, tmp_path / "clean", with_buffer=False), build(), buffer_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ model output


PAYLOADS = [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w')",
    "exec(\"open('{marker}', 'w')\")",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_model_output_is_parsed_never_executed(payload, tmp_path):
    marker = tmp_path / "PWNED"
    code = payload.format(marker=marker)
    preset = load_preset("vr-thinker", ["frames.per_video=4"])
    head = "<synthesis>x</synthesis><think>x</think><recommend answer>TA=1, VQ=1, MQ=1, OA=1, CF=1</recommend answer>"
    turns = {
        "frames": f'{head}<tool_call>{{"name": "select_frames", "arguments": {{"target_frames": {code}}}}}</tool_call>',
        "string_frames": f'{head}<tool_call>{{"name": "select_frames", "arguments": '
                         f'{{"target_frames": {json.dumps(code)}}}}}</tool_call>',
        "name": f'{head}<tool_call>{{"name": {json.dumps(code)}, "arguments": {{"target_frames": [1]}}}}</tool_call>',
        "bare_call": f"{head}<tool_call>{code}</tool_call>",
    }
    expected = {
        "frames": ProblemCode.INVALID_JSON,
        "string_frames": ProblemCode.NOT_A_LIST,
        "name": ProblemCode.UNKNOWN_TOOL,
        "bare_call": ProblemCode.INVALID_JSON,
    }
    for key, text in turns.items():
        result = check_turn(text, TurnState(), preset)
        assert result.tool_call.kind == "error" and result.tool_call.problem.code is expected[key], key
    boxed = check_turn(f"<synthesis>x</synthesis><think>x</think><final answer>TA=1, VQ=1, MQ=1, OA=1 "
                       f"\\boxed{{{code}}}</final answer>", TurnState(), preset)
    assert ProblemCode.BAD_VALUE in boxed.codes and boxed.answer == {"TA": 1, "VQ": 1, "MQ": 1, "OA": 1}

    # Through the environment: a defined execution-error reply, then a defined end; nothing raises or runs.
    env = VideoPairEnv("p", VIDEO, VIDEO, preset)
    env.reset()
    first = env.step(turns["frames"])
    assert not first.done and first.observation["content"][0]["text"].startswith("After selecting frames:\nExecution")
    last = env.step(f"<synthesis>x</synthesis><think>x</think><final answer>{code}</final answer>")
    assert last.done and ProblemCode.ANSWER_SYNTAX.value in last.info["problems"]
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- source scan

SOURCE_DIRS = ("mmreward", "vr_thinker", "vlm_rm", "train", "eval", "bench", "data")
FORBIDDEN_CALLS = {
    "eval": "eval() of text", "exec": "exec() of text", "literal_eval": "literal_eval of text",
    "load_replay_buffer": "SB3 pickled replay buffer", "load_state": "accelerate load_state",
}
SB3_ALGORITHMS = {"SAC", "PPO", "TD3", "DDPG", "A2C", "DQN"}
UNSAFE_KEYWORDS = {("allow_pickle", True), ("weights_only", False), ("trust_remote_code", True)}


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _owner(node: ast.Call) -> str:
    func = node.func
    return func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, why) for each call that evaluates text, unpickles, or loads a checkpoint unchecked."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name, owner = _call_name(node), _owner(node)
        keywords = {(k.arg, k.value.value) for k in node.keywords if isinstance(k.value, ast.Constant)}
        if name in FORBIDDEN_CALLS and not (name == "eval" and isinstance(node.func, ast.Attribute)):
            found.append((node.lineno, FORBIDDEN_CALLS[name]))  # `module.eval()` (train/eval mode) is fine
        if owner in ("pickle", "cloudpickle", "dill", "joblib") and name.startswith("load"):
            found.append((node.lineno, f"{owner}.{name}"))
        if owner in SB3_ALGORITHMS and name == "load" and "custom_objects" not in {k.arg for k in node.keywords}:
            found.append((node.lineno, f"{owner}.load unpickles the zip's entries"))
        if owner == "torch" and name == "load" and ("weights_only", True) not in keywords:
            found.append((node.lineno, "torch.load without weights_only=True"))
        found += [(node.lineno, f"{k}={v}") for k, v in keywords & UNSAFE_KEYWORDS]
    return found


def test_the_source_scan_catches_each_pattern():
    bad = ("eval(t)\nexec(t)\nast.literal_eval(t)\npickle.loads(b)\ntorch.load(f)\nnp.load(f, allow_pickle=True)\n"
           "torch.load(f, weights_only=False)\nx.from_pretrained(p, trust_remote_code=True)\nacc.load_state(p)\n"
           "m.load_replay_buffer(p)\nSAC.load(p)\n")
    assert [line for line, _ in unsafe_calls(bad)] == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11]
    safe = "model.eval()\ntorch.load(f, weights_only=True)\nnp.load(f)\nSAC.load(p, custom_objects=c)\n"
    assert unsafe_calls(safe) == []


def test_no_code_evaluating_or_unpickling_calls_in_the_sources():
    """eval/exec/pickle never appear; torch.load always names weights_only=True; accelerate's load_state only
    inside mmreward.training.trainer.load_checkpoint (which checks the pickles first)."""
    allowed = {("mmreward/training/trainer.py", "accelerate load_state")}
    found = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += [f"{rel}:{line}: {why}" for line, why in unsafe_calls(path.read_text(encoding="utf-8"))
                      if (rel, why) not in allowed]
    assert found == []
