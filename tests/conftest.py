import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RL_PLASTICITY_NO_PROGRESS", "1")


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only add overhead (and stall badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
