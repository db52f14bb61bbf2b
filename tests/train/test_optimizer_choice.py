"""Which AdamW the stage trainers build: fused on unsharded CUDA runs, the default elsewhere."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from mmreward.training.trainer import use_fused_adamw


@pytest.mark.parametrize(("device", "distributed", "fused"), [
    ("cuda", DistributedType.NO, True),
    ("cuda", DistributedType.MULTI_GPU, True),
    ("cuda", DistributedType.FSDP, False),
    ("cuda", DistributedType.DEEPSPEED, False),
    ("cpu", DistributedType.NO, False),
    ("cpu", DistributedType.MULTI_CPU, False),
])
def test_fused_adamw_rule(device, distributed, fused):
    acc = SimpleNamespace(device=torch.device(device), distributed_type=distributed)
    assert use_fused_adamw(acc) is fused


def test_cpu_accelerator_keeps_the_default_adamw():
    assert use_fused_adamw(Accelerator(cpu=True)) is False
