"""Triton backend of the multi-state ops (``DLAConfig.backend="triton"``): same signature as `hf_dla.ops.chunk`.

Kernels in `kernels.py`, autograd wrappers and input checks in `chunk.py`. The memory plans (which slot each
token goes to) stay the PyTorch ones of `hf_dla.memory_plans`: see `chunk.py` and RESULTS.md ("Triton").
"""

from .chunk import interpreter_active, triton_gated_delta_rule, triton_mamba2

__all__ = ["interpreter_active", "triton_gated_delta_rule", "triton_mamba2"]
