"""Shared by the stage tests: each in-process run builds its own Accelerator."""

import pytest
from accelerate.state import AcceleratorState


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The Accelerator's state is a process-wide singleton: reset it after every test."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
