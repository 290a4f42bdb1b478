"""Per-token multi-state recurrence (ground truth and decoding step). The code lives in the flat module
``hf_dla/ops_naive.py`` so that ``save_pretrained`` can copy it beside the modeling file for remote code."""

from ..ops_naive import naive_gated_delta_rule, naive_mamba2

__all__ = ["naive_gated_delta_rule", "naive_mamba2"]
