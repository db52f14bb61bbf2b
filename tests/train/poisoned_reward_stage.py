"""train/reward.py with a NaN gradient at one optimizer step, for the non-finite guard tests (launched like the stage).

    POISON_STEP=3 accelerate launch ... tests/train/poisoned_reward_stage.py <the stage's arguments>

The reward model's forward at step POISON_STEP (on process 0 only; the loss stays finite) passes NaN gradients
back. Besides its usual outputs the run writes the full weights, gathered from every process, at each checkpoint
(`weights_step_N.safetensors`) and when the guard stops it (`weights_at_stop.safetensors`), so a test can check that
the poisoned step left the weights of the last good checkpoint. Needs an evaluation-free run until the poisoned
step (forward calls count steps).
"""

import importlib.util
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmreward.model import RewardModel
from mmreward.training.trainer import NonFiniteLossError, RewardTrainer

ROOT = Path(__file__).resolve().parents[2]
POISON_STEP = int(os.environ["POISON_STEP"])


class NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def _poison_forward():
    calls = {"n": 0}
    original = RewardModel.forward

    def forward(self, inputs):
        rewards = original(self, inputs)
        calls["n"] += 1
        if calls["n"] == POISON_STEP and torch.distributed.get_rank() == 0:
            rewards = NaNGradient.apply(rewards)
        return rewards

    RewardModel.forward = forward


def _dump_weights(trainer: RewardTrainer, name: str) -> None:
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective: gathers ZeRO-3 / FSDP shards
    if trainer.accelerator.is_main_process:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, trainer.output_dir / name)


def _record_weights():
    save_checkpoint, train = RewardTrainer.save_checkpoint, RewardTrainer.train

    def save_and_dump(self):
        path = save_checkpoint(self)
        _dump_weights(self, f"weights_step_{self.state.step}.safetensors")
        return path

    def train_and_dump_on_stop(self):
        try:
            return train(self)
        except NonFiniteLossError:
            _dump_weights(self, "weights_at_stop.safetensors")
            raise

    RewardTrainer.save_checkpoint, RewardTrainer.train = save_and_dump, train_and_dump_on_stop


if __name__ == "__main__":
    _poison_forward()
    _record_weights()
    spec = importlib.util.spec_from_file_location("reward_stage", ROOT / "train" / "reward.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main()
