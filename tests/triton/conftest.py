"""Where the Triton kernels run in these tests: the CPU interpreter by default, a GPU with TRITON_INTERPRET=0.

``TRITON_INTERPRET`` only affects functions decorated after it is set, Triton's own library functions included, so
the suite-wide ``tests/conftest.py`` sets it before anything imports triton; the ops raise a clear error when the
interpreter was switched on too late.
"""

import os

import pytest
import torch

INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"


@pytest.fixture
def device() -> torch.device:
    if INTERPRETED:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 but no CUDA device: the compiled Triton kernels have nowhere to run")
    return torch.device("cuda")
