"""What the hardware allows, asked once by training (`sft`) and evaluation alike: bf16, and the attention kernel.

Small on purpose: evaluation needs these two answers and nothing of TRL's trainer.
"""

from __future__ import annotations

import torch
from transformers.utils import is_flash_attn_2_available


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_attn_implementation(requested: str | None) -> str:
    """FlashAttention 2 when it is installed and a GPU is present, SDPA otherwise; an explicit request is honoured."""
    fa2_ok = torch.cuda.is_available() and is_flash_attn_2_available()
    if requested == "flash_attention_2" and not fa2_ok:
        raise ValueError(
            "attn_implementation='flash_attention_2' needs a CUDA GPU and `pip install flash-attn`; "
            "leave attn_implementation unset to pick it automatically when available."
        )
    return requested or ("flash_attention_2" if fa2_ok else "sdpa")
