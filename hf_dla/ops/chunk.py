"""Chunked PyTorch multi-state recurrence (CPU training path). The code lives in the flat module
``hf_dla/ops_chunk.py`` so that ``save_pretrained`` can copy it beside the modeling file for remote code."""

from ..ops_chunk import DEFAULT_CHUNK_SIZE, chunk_gated_delta_rule, chunk_mamba2

__all__ = ["DEFAULT_CHUNK_SIZE", "chunk_gated_delta_rule", "chunk_mamba2"]
