"""TRL's trainers as the VR-Thinker stages use them: in the launch's distributed mode, or an error saying why not.

A module of its own because importing TRL takes seconds: the stage scripts import it only after their command line
is read (``--help`` and a mistyped flag answer at once).
"""

from __future__ import annotations

from torch.distributed.fsdp import FSDPModule
from trl import GRPOTrainer, SFTTrainer

from mmreward.training.distributed import ModeCheckedTrainerMixin


class ModeCheckedSFTTrainer(ModeCheckedTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer in the launch's distributed mode (FSDP on CPU too), or an error saying why not."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        if isinstance(head, FSDPModule):
            # accelerate gives the LM head its own FSDP2 unit, and TRL's fused loss reads `lm_head.weight` without
            # calling the head: it would get the sharded DTensor, whose `full_tensor()` backward keeps only this
            # process's gradient (no average over processes). Unsharded first, it is the plain full weight, and
            # FSDP reduces its gradient like every other.
            head.unshard()
        return super().compute_loss(model, inputs, *args, **kwargs)


class ModeCheckedGRPOTrainer(ModeCheckedTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer, stopped with an error when its Accelerator is not in the launch's mode."""
