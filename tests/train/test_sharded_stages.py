"""Distributed modes of the training stages, each launched on two CPU processes with its train/accelerate/*.yaml:
DDP, DeepSpeed ZeRO-2, ZeRO-3 (with and without CPU optimizer offload) and FSDP2.

For each sharded mode: the mode was really used (manifest, no DDP replica digest, sharded checkpoint files), the
weights end within a stated tolerance of DDP after the same steps, the saved model loads with `from_pretrained` under
DDP's key names, a resumed run ends with bit-identical weights, and a NaN gradient stops the run on the weights of
the last good checkpoint. A mode that cannot be had is refused, naming why.

Measured on the 2-core CPU machine (|weight - DDP weight|, max over all weights after 4 steps of the reward stage at
lr 1e-3, where training moves weights by ~4e-3): ZeRO-2 0, FSDP2 0, ZeRO-3 3.6e-5 with and without offload (ZeRO-3
reduces gradients in partitions, summing in another order; AdamW's first steps turn such rounding differences of
near-zero gradients into up to one learning rate). Resumed runs are bit-identical, except with CPU optimizer
offload (DeepSpeed's CPU Adam, see MODES: 7e-7). Each launch takes 30-60 s here; ZeRO-3 is in the default run, the
others are `slow` (the offload one also compiles DeepSpeed's CPU Adam once, ~3 min).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
from mmreward.manifest import INCOMPLETE_MARKER, read_manifest
from mmreward.model import RewardModel
from mmreward.training import distributed
from script_loading import load_script
from vr_thinker.judge import VRThinkerJudge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_helpers import run_ddp, saved_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "train" / "accelerate"
POISONED_STAGE = Path(__file__).resolve().parent / "poisoned_reward_stage.py"


class Mode:
    """A launch config, what the manifest must record, sharded files in `checkpoints/step_N`, the largest weight
    difference allowed against DDP and between a resumed and an uninterrupted run."""

    def __init__(self, config: str, expected: dict, checkpoint_files: list[str], tolerance: float,
                 resume_tolerance: float = 0.0):
        self.config, self.expected, self.checkpoint_files = config, expected, checkpoint_files
        self.tolerance, self.resume_tolerance = tolerance, resume_tolerance


ZERO_FILES = ["pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"]
ZERO3_FILES = [*ZERO_FILES, "pytorch_model/zero_pp_rank_0_mp_rank_00_model_states.pt",
               "pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt"]
MODES = {
    "zero2": Mode("deepspeed_zero2.yaml", {"mode": "deepspeed", "zero_stage": 2, "offload_optimizer": "none"},
                  [*ZERO_FILES, "pytorch_model/mp_rank_00_model_states.pt"], tolerance=1e-5),
    "zero3": Mode("deepspeed_zero3.yaml", {"mode": "deepspeed", "zero_stage": 3, "offload_optimizer": "none"},
                  ZERO3_FILES, tolerance=2e-4),
    # With optimizer offload DeepSpeed steps its compiled CPU Adam, which keeps beta^t as a running float product
    # and recomputes it with pow() on the first step after a resume: the last bits differ (measured 7e-7).
    "zero3_offload": Mode("deepspeed_zero3_offload.yaml",
                          {"mode": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu"}, ZERO3_FILES,
                          tolerance=2e-4, resume_tolerance=2e-6),
    "fsdp2": Mode("fsdp.yaml", {"mode": "fsdp", "fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT"},
                  ["pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
                   "optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp"], tolerance=1e-5),
}
DEFAULT_RUN = "zero3"  # the sharded mode in the default suite; the others are slow
MODE_PARAMS = [pytest.param(name, marks=() if name == DEFAULT_RUN else pytest.mark.slow) for name in MODES]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    config = SyntheticConfig(image_splits=SplitSizes(48, 8, 0), video_splits=SplitSizes(0, 0, 0))
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, config=config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


def _args(tiny, data, out, *extra):
    """4 steps of 4 pairs per process, checkpoint at step 2, the vision tower training too (FSDP shards it)."""
    return [
        "--backbone", str(tiny), "--output_dir", str(out), "--train_file", str(data["images/train"]),
        "--val_file", str(data["images/val"]), "--dimensions", "VQ", "TA", "overall", "--batch_size", "4",
        "--eval_batch_size", "8", "--logging_steps", "1", "--torch_threads", "1", "--seed", "3",
        "--max_steps", "4", "--save_steps", "2", "--freeze_vision", "false", *extra,
    ]


@pytest.fixture(scope="module")
def ddp_run(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    run_ddp(_args(tiny, data, out))
    return out


def test_ddp_two_cpu_processes_end_with_same_weights(ddp_run):
    manifest = read_manifest(ddp_run, expect_stage="reward")
    assert manifest["distributed"]["mode"] == "ddp" and manifest["metrics"]["num_processes"] == 2
    digests = manifest["metrics"]["replica_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]


def _launch(mode: Mode, args: list[str], **kwargs):
    return run_ddp(args, config_file=CONFIGS / mode.config, **kwargs)


@pytest.mark.parametrize("name", MODE_PARAMS)
def test_sharded_reward_stage_matches_ddp(name, tiny, data, ddp_run, tmp_path):
    """The mode is really used and ends within its tolerance of DDP; the model loads like DDP's."""
    mode, out = MODES[name], tmp_path / name
    _launch(mode, _args(tiny, data, out))
    manifest = read_manifest(out, expect_stage="reward")
    used = manifest["distributed"]
    assert {k: used[k] for k in mode.expected} == mode.expected and used["num_processes"] == 2, used
    assert "replica_weight_sha256" not in manifest["metrics"]  # the DDP-only check did not run
    checkpoint = out / "checkpoints" / "step_00000002"
    for rel in mode.checkpoint_files:
        assert (checkpoint / rel).is_file(), rel
    ours, ddp = saved_weights(out), saved_weights(ddp_run)
    assert ours.keys() == ddp.keys()  # ZeRO-3 used to write backbone keys as model.model.*
    untrained = load_file(tiny / "model.safetensors")
    moved = max((ddp[n] - untrained[n]).abs().max().item() for n in untrained)
    worst = max((ours[n] - ddp[n]).abs().max().item() for n in ddp)
    print(f"{name}: max |w - w_ddp| = {worst:.2e} (training moved weights by up to {moved:.1e})")
    assert worst <= mode.tolerance and moved > 20 * mode.tolerance
    model = RewardModel.from_pretrained(out)
    assert model.dimensions == ["VQ", "TA", "overall"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODES))
def test_sharded_reward_stage_resumes_exactly(name, tiny, data, tmp_path):
    """A run resumed from the step-2 sharded checkpoint of another ends with the same weights, bit for bit (within
    `resume_tolerance`: CPU Adam under offload)."""
    mode, straight, resumed = MODES[name], tmp_path / "straight", tmp_path / "resumed"
    _launch(mode, _args(tiny, data, straight))
    shutil.copytree(straight / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    _launch(mode, _args(tiny, data, resumed))
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("step_00000002") and metrics["steps"] == 4
    a, b = saved_weights(resumed), saved_weights(straight)
    assert a.keys() == b.keys()
    for n in a:
        assert (a[n] - b[n]).abs().max().item() <= mode.resume_tolerance, n


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", *MODES])
def test_nan_gradient_stops_on_the_last_good_weights(name, tiny, data, tmp_path):
    """A NaN gradient at step 3 (process 0 only, finite loss) stops every process; the weights then are those of the
    step-2 checkpoint (DeepSpeed steps inside backward: it must have skipped the update)."""
    out = tmp_path / name
    config = None if name == "ddp" else CONFIGS / MODES[name].config
    result = run_ddp([*_args(tiny, data, out, "--max_steps", "5", "--eval_steps", "0")], script=POISONED_STAGE,
                     config_file=config, expect_exit=1, env_extra={"POISON_STEP": "3"})
    assert "non-finite gradient norm at step 3" in result.stderr and "step_00000002" in result.stderr
    assert (out / INCOMPLETE_MARKER).exists() and [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    good, stopped = load_file(out / "weights_step_2.safetensors"), load_file(out / "weights_at_stop.safetensors")
    assert good.keys() == stopped.keys() and len(good) > 10
    for n in good:
        assert torch.equal(good[n], stopped[n]), n


HEAD_RUNS = {  # head -> its stage arguments: RewardDance's verdict token (LM head), VideoAlign's reward tokens
    "yes_token": ["--head", "yes_token", "--dimensions", "overall"],  # one verdict per sequence
    # LoRA: the reward tokens' rows train in the frozen embedding matrix through a gradient hook
    "reward_token": ["--head", "reward_token", "--tuning_mode", "lora", "--lora_r", "4", "--overall", "sum",
                     "--dimensions", "VQ", "TA"],
}


@pytest.mark.slow
@pytest.mark.parametrize("head", list(HEAD_RUNS))
def test_other_heads_under_zero3_and_fsdp2(head, tiny, data, tmp_path):
    """The yes-token head (reads the LM head) and the reward-token head (token rows in a frozen embedding) under
    ZeRO-3 and FSDP2 end within ZeRO-3's tolerance of DDP. FSDP2 would drop the token-row gradient hook: refused."""
    args = lambda out: [*_args(tiny, data, out, "--max_steps", "3", "--save_steps", "0"), *HEAD_RUNS[head]]  # noqa: E731
    run_ddp(args(tmp_path / "ddp"))
    ddp = saved_weights(tmp_path / "ddp")
    for name in ("zero3", "fsdp2"):
        out = tmp_path / name
        if head == "reward_token" and name == "fsdp2":
            result = _launch(MODES[name], args(out), expect_exit=1)
            assert "FSDP2 replaces that parameter by its shards" in result.stderr
            continue
        _launch(MODES[name], args(out))
        assert read_manifest(out, expect_stage="reward")["distributed"]["mode"] == MODES[name].expected["mode"]
        ours = saved_weights(out)
        assert ours.keys() == ddp.keys()
        worst = max((ours[n] - ddp[n]).abs().max().item() for n in ddp)
        print(f"{head} {name}: max |w - w_ddp| = {worst:.2e}")
        assert worst <= MODES["zero3"].tolerance
        assert RewardModel.from_pretrained(out).config_dict()["head"]["name"] == head


# ---------------------------------------------------------------------------------------- VR-Thinker SFT stage

SFT_SCRIPT = ROOT / "train" / "vrt_sft.py"
SFT_CHECKPOINT_FILES = {  # below checkpoints/checkpoint-2 (the Trainer's layout)
    "zero2": ["global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"],
    "zero3": ["global_step2/zero_pp_rank_0_mp_rank_00_model_states.pt",
              "global_step2/zero_pp_rank_1_mp_rank_00_model_states.pt"],
    "fsdp2": ["pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
              "optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp"],
}
SFT_TOLERANCE = 1e-4  # measured after 4 steps at lr 1e-2: ZeRO-2 7e-9, ZeRO-3 4e-6, FSDP2 8e-7


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    config = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(8, 0, 0), num_frames=8,
                             video_size=48)
    out = tmp_path_factory.mktemp("videos")
    generate_synthetic(out, seed=0, config=config)
    return out


def _sft_args(videos, out, *extra):
    """4 steps of one trace per process (8 teacher traces), checkpoint at step 2, short contexts (as test_vrt_sft)."""
    return [
        "--config", str(ROOT / "train/configs/vrt_sft.yaml"), "--pool_frames", "8", "--initial_frames", "2",
        "--max_frames_per_call", "4", "--motion_frames", "2", "--system_prompt", "Judge which video is better.",
        "--per_device_train_batch_size", "1", "--report_to", "none", "--logging_steps", "1", "--warmup_steps", "0",
        "--model_path", "tiny", "--data", str(videos), "--output_dir", str(out), "--max_pairs", "8",
        "--eval_pairs", "0", "--eval_before", "false", "--max_steps", "4", "--save_strategy", "steps",
        "--save_steps", "2", *extra,
    ]


@pytest.fixture(scope="module")
def sft_ddp_run(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_ddp") / "run"
    run_ddp(_sft_args(videos, out), script=SFT_SCRIPT)
    assert read_manifest(out, expect_stage="vrt_sft")["distributed"]["mode"] == "ddp"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SFT_CHECKPOINT_FILES))
def test_sharded_sft_stage_matches_ddp_and_resumes_exactly(name, videos, sft_ddp_run, tmp_path):
    """The SFT stage in each mode: really used, within SFT_TOLERANCE of DDP (same key names, the judge loads), and
    resumed from its sharded step-2 checkpoint it ends bit-identical."""
    mode, straight, resumed = MODES[name], tmp_path / "straight", tmp_path / "resumed"
    run_ddp(_sft_args(videos, straight), script=SFT_SCRIPT, config_file=CONFIGS / mode.config)
    used = read_manifest(straight, expect_stage="vrt_sft")["distributed"]
    assert {k: used[k] for k in mode.expected} == mode.expected and used["num_processes"] == 2, used
    checkpoint = straight / "checkpoints" / "checkpoint-2"
    for rel in SFT_CHECKPOINT_FILES[name]:
        assert (checkpoint / rel).is_file(), rel
    ours, ddp = load_file(straight / "model.safetensors"), load_file(sft_ddp_run / "model.safetensors")
    assert ours.keys() == ddp.keys()
    worst = max((ours[n] - ddp[n]).abs().max().item() for n in ddp)
    untrained = load_file(sft_ddp_run / "tiny_backbone" / "model.safetensors")
    moved = max((ddp[n] - untrained[n]).abs().max().item() for n in ddp)
    print(f"SFT {name}: max |w - w_ddp| = {worst:.2e} (training moved weights by up to {moved:.1e})")
    assert worst <= SFT_TOLERANCE and moved > 20 * SFT_TOLERANCE
    VRThinkerJudge.from_pretrained(straight)  # what a user loads

    run_ddp(_sft_args(videos, resumed, "--resume_from_checkpoint", str(checkpoint)), script=SFT_SCRIPT,
            config_file=CONFIGS / mode.config)
    again = load_file(resumed / "model.safetensors")
    for n in ours:
        assert torch.equal(again[n], ours[n]), n


# ---------------------------------------------------------------------------------------- refusals and settings


def test_a_mode_that_cannot_be_had_is_refused(tiny, data, tmp_path, monkeypatch):
    """Asking for FSDP without a launcher (no process group) or for DeepSpeed without it installed stops the stage
    before anything is written, naming why; nothing trains as plain DDP/single instead."""
    stage = load_script("train/reward.py")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(distributed.DistributedModeError, match=r"asked for fsdp but the Accelerator runs as single .*no process group"):
        stage.main(_args(tiny, data, tmp_path / "fsdp"))
    assert not (tmp_path / "fsdp").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(distributed.DistributedModeError, match=r"asked for DeepSpeed but DeepSpeed is not installed .*\.\[deepspeed\]"):
        stage.main(_args(tiny, data, tmp_path / "deepspeed"))


def test_requested_mode_follows_the_launcher_environment(monkeypatch):
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.requested_mode() == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.requested_mode() == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.requested_mode() == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "True")
    assert distributed.requested_mode() == "deepspeed"


def test_deepspeed_settings_the_launch_file_contradicts_are_refused():
    class Plugin:
        deepspeed_config = {"gradient_accumulation_steps": 1, "gradient_clipping": "auto"}

    class State:
        deepspeed_plugin = Plugin()

    class Acc:
        state = State()

    distributed.settle_deepspeed_config(Acc(), gradient_clipping=0.5, train_micro_batch_size_per_gpu=4)
    assert Plugin.deepspeed_config == {"gradient_accumulation_steps": 1, "gradient_clipping": 0.5,
                                       "train_micro_batch_size_per_gpu": 4}
    with pytest.raises(distributed.DistributedModeError, match="sets gradient_accumulation_steps=1 but the stage"):
        distributed.settle_deepspeed_config(Acc(), gradient_accumulation_steps=8)
