import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# The tests use tiny tensors: one thread is as fast, and on a shared 2-core machine two
# OpenMP threads fighting another process made them up to 50x slower (measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one torch thread: a library may set the count for the whole
    process (Lightning's launcher sets it to the number of CPUs)."""
    torch.set_num_threads(1)
    yield
