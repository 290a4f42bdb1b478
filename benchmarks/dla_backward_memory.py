"""Slot-state memory the Triton backward keeps, per layer and sequence: every chunk start's (R = 1, the layout of
Log-Linear's chunked scan, which keeps its L level states at every chunk start) against checkpoints every R chunks.

Formula (`hf_dla.ops.triton.chunk.saved_state_chunks`), float32, per layer and sequence, N = T / chunk chunks:

    kept from the forward   H * ceil(N / R) * S * K * V * 4 bytes   (R = 1: (N + 1) chunk starts, no recompute)
    recomputed at a time    H * (R + 1)     * S * K * V * 4 bytes   (one segment, freed after its backward)

with S the slot count; the paper runs dla with Log-Linear's maximum state count, S = L = ceil(log2 T) + 1 levels
(15 at 16K). The default R is about sqrt(N). A second table checks the formula against the bytes autograd
actually keeps (`torch.autograd.graph.saved_tensors_hooks`) at a small shape, in Triton's interpreter (CPU).

    python -m benchmarks.dla_backward_memory
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # the measured table runs the kernels in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hf_dla.ops.triton.chunk import default_checkpoint_every, saved_state_chunks  # noqa: E402

CHUNK = 64
# Mamba-2-780M: 48 heads, state size (K) 128, head dim (V) 64. Gated DeltaNet-1.3B as fla's GatedDeltaNetConfig
# builds it (hidden 2048, 6 heads, key head dim 256, value head dim 512): formula only, since the Triton kernels
# take head dims up to 128 (such heads run on backend="chunk").
MODELS = {"Mamba-2-780M": (48, 128, 64), "Gated DeltaNet-1.3B": (6, 256, 512)}
SEQ_LENS = (2048, 4096, 8192, 16384)


def levels(seq_len: int) -> int:
    return math.ceil(math.log2(seq_len)) + 1


def state_bytes(heads, key_dim, value_dim, slots, chunks) -> int:
    return heads * chunks * slots * key_dim * value_dim * 4


def formula_table() -> str:
    lines = [
        "| model | T | S = L | R | Log-Linear layout / R = 1 (GiB) | kept, R (GiB) | + recompute (GiB) "
        "| peak / R = 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, (heads, key_dim, value_dim) in MODELS.items():
        for seq_len in SEQ_LENS:
            num_chunks, slots = seq_len // CHUNK, levels(seq_len)
            every = default_checkpoint_every(num_chunks)
            kept, segment = saved_state_chunks(num_chunks, every)
            all_states = state_bytes(heads, key_dim, value_dim, slots, saved_state_chunks(num_chunks, 1)[0])
            kept_bytes = state_bytes(heads, key_dim, value_dim, slots, kept)
            segment_bytes = state_bytes(heads, key_dim, value_dim, slots, segment)
            lines.append(
                f"| {model} | {seq_len} | {slots} | {every} | {all_states / 2**30:.2f} | {kept_bytes / 2**30:.3f} "
                f"| {segment_bytes / 2**30:.3f} | {(kept_bytes + segment_bytes) / all_states:.3f} |"
            )
    return "\n".join(lines)


def measured_table() -> str:
    """Saved slot-state bytes measured on the op (Mamba-2, dla-like 3-slot map, B=1, H=2, K=V=16, chunk 16)."""
    from hf_dla.ops.triton import triton_mamba2

    heads, dim, chunk, slots = 2, 16, 16, 3
    lines = ["| T | chunks | R | measured bytes | formula bytes | equal |", "|---|---|---|---|---|---|"]
    generator = torch.Generator().manual_seed(0)
    for seq_len in (69, 160):
        num_chunks = math.ceil(seq_len / chunk)
        for every in (1, 2, 3, default_checkpoint_every(num_chunks)):
            shape = (1, seq_len, heads)
            leaves = [
                torch.randn(*shape, *d, generator=generator).requires_grad_() for d in ([dim], [dim], [dim], [], [])
            ]
            lam = torch.rand(*shape, slots, generator=generator)
            slot_map = torch.arange(slots).expand(1, seq_len, slots).roll(1, -1).clone()  # every step ages the slots
            saved = []

            def pack(tensor, saved=saved):
                if tensor.dim() == 6:  # the (B, H, chunks, S, K, V) slot states
                    saved.append(tensor.numel() * tensor.element_size())
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                triton_mamba2(*leaves, slot_map, lam, chunk_size=chunk, checkpoint_every=every)
            formula = state_bytes(heads, dim, dim, slots, saved_state_chunks(num_chunks, every)[0])
            lines.append(
                f"| {seq_len} | {num_chunks} | {every} | {sum(saved)} | {formula} | {sum(saved) == formula} |"
            )
    return "\n".join(lines)


def main() -> None:
    print("Slot states kept for the backward, per layer and sequence (chunk 64, float32), R = default:")
    print(formula_table())
    print("\nFormula against the bytes autograd keeps (interpreter on a CPU, or the GPU):")
    print(measured_table())


if __name__ == "__main__":
    main()
