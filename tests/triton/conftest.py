"""Where the Triton kernels run in these tests: the CPU interpreter by default, a GPU with TRITON_INTERPRET=0.

``TRITON_INTERPRET=1`` only affects functions decorated after it is set, and that includes Triton's own
library functions (``tl.sum``, ``tl.max``, ...), decorated when ``triton`` is first imported. The suite-wide
``tests/conftest.py`` sets it before anything imports triton; when this directory is run on its own from
elsewhere and ``triton`` was imported first, the Python side of Triton and of ``hf_dla.ops.triton`` is imported
afresh here (the compiled extension ``triton._C``, which cannot be loaded twice, is kept).
"""

import os
import sys

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"


def _triton_built_for_the_interpreter() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(sys.modules["triton"].language.sum, InterpretedFunction)


if INTERPRETED and "triton" in sys.modules and not _triton_built_for_the_interpreter():
    stale = [
        name
        for name in sys.modules
        if (name == "triton" or name.startswith(("triton.", "hf_dla.ops.triton"))) and not name.startswith("triton._C")
    ]
    for name in stale:
        del sys.modules[name]


@pytest.fixture
def device() -> torch.device:
    if INTERPRETED:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 but no CUDA device: the compiled Triton kernels have nowhere to run")
    return torch.device("cuda")
