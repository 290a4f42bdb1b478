"""Run the Triton kernels on the CPU: Triton's interpreter, switched on before any kernel is decorated."""

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

# A kernel module decorated before this file ran (an earlier test imported it) is rebuilt for the interpreter.
if "hf_dla.ops.triton.kernels" in sys.modules:
    importlib.reload(sys.modules["hf_dla.ops.triton.kernels"])
