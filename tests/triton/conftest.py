"""Run the Triton kernels on the CPU, in Triton's interpreter.

``TRITON_INTERPRET=1`` only affects functions decorated after it is set, and that includes Triton's own
library functions (``tl.sum``, ``tl.max``, ...), decorated when ``triton`` is first imported. In a full test
run an earlier test module has usually imported ``triton`` already (``torch._dynamo`` does), so the Python
side of Triton and of ``hf_dla.ops.triton`` is imported afresh here; the compiled extension ``triton._C``
(which cannot be loaded twice) is kept.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"


def _triton_built_for_the_interpreter() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(sys.modules["triton"].language.sum, InterpretedFunction)


if "triton" in sys.modules and not _triton_built_for_the_interpreter():
    stale = [
        name
        for name in sys.modules
        if (name == "triton" or name.startswith(("triton.", "hf_dla.ops.triton"))) and not name.startswith("triton._C")
    ]
    for name in stale:
        del sys.modules[name]
