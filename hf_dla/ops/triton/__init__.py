"""Triton backend of the multi-state ops (``DLAConfig.backend="triton"``): same signature as `hf_dla.ops.chunk`.

Kernels in `kernels.py`, autograd wrappers and input checks in `chunk.py`; `plan.py` holds `TritonDynamicPlan`,
the dla memory plan's sequential scan as one Triton program per sequence (a drop-in `DynamicPlan`).
"""

from .chunk import interpreter_active, triton_gated_delta_rule, triton_mamba2
from .plan import TritonDynamicPlan

__all__ = ["TritonDynamicPlan", "interpreter_active", "triton_gated_delta_rule", "triton_mamba2"]
