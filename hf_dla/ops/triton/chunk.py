"""Triton backend of the chunked multi-state recurrence: ``triton_mamba2`` and ``triton_gated_delta_rule``.

Same signature and semantics as `hf_dla.ops.chunk` (see `hf_dla/ops/__init__.py`). The math is the chunked
form documented in `hf_dla/ops_chunk.py`; the work is split into three `torch.autograd.Function`s whose
forward and backward are Triton kernels (`kernels.py`):

- `ChunkPrep`: chunk-local WY / UT form (in-chunk attention ``A``, slot-reading queries, end-slot write keys,
  the Gated DeltaNet carry ``M``), one program per (batch, head, chunk);
- `IntraAttention`: in-chunk attention weighted by the lambda of every (step, token) pair;
- `SlotRecurrence`: the sequential pass over chunks that reads, carries, moves / merges and writes the slots.

PyTorch glue between them (differentiated by autograd) only reshapes into chunks, takes the in-chunk
cumulative log-decay, composes the slot maps inside each chunk (integer work shared with `ops.chunk`, in
`hf_dla/ops_utils.py`) and gathers the lambda weights. All kernel math is float32; the output is cast to the
dtype of ``v``.

Inputs: CUDA tensors, or CPU tensors when Triton runs in interpreter mode (``TRITON_INTERPRET=1`` set
before Triton is imported; slow, for tests); q, k, v in one dtype, the gates (log_decay, beta, lam) in that dtype
or float32 (the mixers keep the log-decay in float32). Non-contiguous inputs are fine (they are copied into the chunk
layout). Key and value head dims up to 128, chunk sizes 16, 32 or 64. Anything else raises a ValueError
that names the fix (usually ``backend="chunk"``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from ...ops_chunk import DEFAULT_CHUNK_SIZE
from ...ops_utils import check_shapes, chunk_documents, pad_time, source_indices
from . import kernels

MAX_HEAD_DIM = 128
CHUNK_SIZES = (16, 32, 64)
VALUE_BLOCK = 32  # V columns per program of the slot recurrence (more programs in flight on a GPU)
# Kernels that store slot data and load it back later in the same program run without software pipelining,
# which could prefetch a load above the store (and barrier) it must follow.
SEQUENTIAL = 1


def _tile(dim: int) -> int:
    """Power-of-two tile covering `dim` (tl.dot needs at least 16)."""
    return max(16, triton.next_power_of_2(dim))


def interpreter_active() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return isinstance(kernels.chunk_prep_fwd_kernel, InterpretedFunction)


def check_device(device: torch.device) -> None:
    """The kernels take CUDA tensors, or CPU tensors in Triton's interpreter."""
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_active()):
        raise RuntimeError(
            f"triton ops run on CUDA tensors; got {device.type} tensors. Use backend='chunk' on the CPU "
            "(or set TRITON_INTERPRET=1 before importing triton to run the kernels in the slow interpreter)."
        )
    if device.type == "cpu" and not isinstance(triton.language.sum, InterpretedFunction):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton was imported (importing hf_dla imports it, through torch), "
            "so Triton's own library is not interpreted. Set it before the first import."
        )


def launch_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the inputs' one (tensors on cuda:1, say)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_triton_inputs(q, k, v, log_decay, beta, slot_map, lam, initial_state, chunk_size) -> None:
    features = {"q": q, "k": k, "v": v}
    gates = {"log_decay": log_decay, "beta": beta, **({} if lam is None else {"lam": lam})}
    dtypes = {name: x.dtype for name, x in {**features, **gates}.items()}
    gate_dtypes_ok = all(x.dtype in (q.dtype, torch.float32) for x in gates.values())
    if len({x.dtype for x in features.values()}) > 1 or not q.dtype.is_floating_point or not gate_dtypes_ok:
        raise ValueError(
            "triton ops need q, k, v in one floating dtype and log_decay, beta, lam in that dtype or float32; "
            f"got {dtypes}. Cast them."
        )
    if initial_state is not None and initial_state.dtype != torch.float32:
        raise ValueError(
            f"initial_state must be float32 (the state layout of every backend); got {initial_state.dtype}."
        )
    tensors = {**features, **gates, "slot_map": slot_map, "initial_state": initial_state}
    devices = {name: x.device for name, x in tensors.items() if x is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"triton ops need every input on one device; got {devices}.")
    check_device(q.device)
    key_dim, value_dim = q.shape[-1], v.shape[-1]
    if max(key_dim, value_dim) > MAX_HEAD_DIM:
        raise ValueError(
            f"triton ops support head dims up to {MAX_HEAD_DIM}; got key dim {key_dim}, value dim {value_dim}. "
            "Use backend='chunk' for larger heads."
        )
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"triton ops need chunk_size in {CHUNK_SIZES}; got {chunk_size}.")


class ChunkPrep(torch.autograd.Function):
    """(q, k, g, beta) per chunk -> A, query_old, write_keys (+ the carry M for Gated DeltaNet)."""

    @staticmethod
    def forward(ctx, q, k, g, beta, delta: bool):
        batch, heads, num_chunks, chunk, key_dim = q.shape
        attn = q.new_empty(batch, heads, num_chunks, chunk, chunk)
        query_old, write_keys = torch.empty_like(q), torch.empty_like(q)
        carry = q.new_empty(batch, heads, num_chunks, key_dim, key_dim) if delta else None
        inverse = torch.empty_like(attn) if delta else None
        kernels.chunk_prep_fwd_kernel[(batch * heads * num_chunks,)](
            q, k, g, beta, attn, query_old, write_keys, carry if delta else attn, inverse if delta else attn,
            K=key_dim, C=chunk, BK=_tile(key_dim), DELTA=delta,
        )  # fmt: skip
        ctx.delta = delta
        ctx.save_for_backward(q, k, g, beta, inverse)
        return (attn, query_old, write_keys, carry) if delta else (attn, query_old, write_keys)

    @staticmethod
    def backward(ctx, d_attn, d_query_old, d_write_keys, d_carry=None):
        q, k, g, beta, inverse = ctx.saved_tensors
        batch, heads, num_chunks, chunk, key_dim = q.shape
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dg, dbeta = torch.empty_like(g), torch.empty_like(beta)
        grads = [x.contiguous() for x in (d_attn, d_query_old, d_write_keys)]
        kernels.chunk_prep_bwd_kernel[(batch * heads * num_chunks,)](
            q, k, g, beta, inverse if ctx.delta else q, *grads, d_carry.contiguous() if ctx.delta else q,
            dq, dk, dg, dbeta,
            K=key_dim, C=chunk, BK=_tile(key_dim), DELTA=ctx.delta,
        )  # fmt: skip
        return dq, dk, dg, dbeta, None


class IntraAttention(torch.autograd.Function):
    """o = (A * token_weights) @ v per chunk; token_weights None means all ones."""

    @staticmethod
    def forward(ctx, attn, token_weights, v):
        batch, heads, num_chunks, chunk, value_dim = v.shape
        out = torch.empty_like(v)
        has_weights = token_weights is not None
        kernels.intra_attention_fwd_kernel[(batch * heads * num_chunks,)](
            attn, token_weights if has_weights else attn, v, out,
            V=value_dim, C=chunk, BV=_tile(value_dim), HAS_WEIGHTS=has_weights,
        )  # fmt: skip
        ctx.save_for_backward(attn, token_weights, v)
        return out

    @staticmethod
    def backward(ctx, d_out):
        attn, token_weights, v = ctx.saved_tensors
        batch, heads, num_chunks, chunk, value_dim = v.shape
        has_weights = token_weights is not None
        d_attn, dv = torch.empty_like(attn), torch.empty_like(v)
        d_weights = torch.empty_like(attn) if has_weights else None
        kernels.intra_attention_bwd_kernel[(batch * heads * num_chunks,)](
            attn, token_weights if has_weights else attn, v, d_out.contiguous(), d_attn,
            d_weights if has_weights else attn, dv,
            V=value_dim, C=chunk, BV=_tile(value_dim), HAS_WEIGHTS=has_weights,
        )  # fmt: skip
        return d_attn, d_weights, dv


def default_checkpoint_every(num_chunks: int) -> int:
    """Chunks between kept slot states: about sqrt(N), which minimises checkpoints (N / R) plus the segment
    recomputed in the backward (R + 1). The recompute is one forward pass without the slot reads whatever R is,
    so R only trades memory (and N / R launches)."""
    return max(1, math.isqrt(max(num_chunks - 1, 0)) + 1)


def check_checkpoint_every(checkpoint_every) -> None:
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(
            f"checkpoint_every must be a positive int (chunks between kept slot states) or None (about "
            f"sqrt(number of chunks)); got {checkpoint_every!r}."
        )


def saved_state_chunks(num_chunks: int, checkpoint_every: int) -> tuple[int, int]:
    """Chunk starts of slot states the backward needs: (kept from the forward, recomputed at a time)."""
    if checkpoint_every == 1:
        return num_chunks + 1, 0
    return math.ceil(num_chunks / checkpoint_every), min(checkpoint_every, num_chunks) + 1


class SlotRecurrence(torch.autograd.Function):
    """The sequential pass over chunks: slot reads (o_inter), carries, moves / merges, token writes. For the
    backward it keeps the slot states of every `checkpoint_every`-th chunk start and recomputes the others,
    one segment at a time (`checkpoint_every=1` keeps them all and recomputes nothing)."""

    @staticmethod
    def forward(
        ctx, query_old, write_keys, carry, v, old_weights, end_old, end_tok, initial_state, delta: bool,
        checkpoint_every: int,
    ):  # fmt: skip
        batch, heads, num_chunks, chunk, key_dim = query_old.shape
        value_dim, num_slots = v.shape[-1], old_weights.shape[-1]
        training = any(ctx.needs_input_grad)
        every = checkpoint_every if training else 1
        # The forward's own buffer keeps every chunk start for R = 1, else two in turn (and the checkpoints).
        kept_chunks = num_chunks + 1 if training and every == 1 else 2
        states = v.new_empty(batch, heads, kept_chunks, num_slots, key_dim, value_dim)
        states[:, :, 0] = initial_state
        save = training and every > 1
        checkpoints = states  # only read when saving
        if save:
            checkpoints = v.new_empty(batch, heads, math.ceil(num_chunks / every), num_slots, key_dim, value_dim)
            checkpoints[:, :, 0] = initial_state
        out = torch.empty_like(v)
        value_block = min(VALUE_BLOCK, _tile(value_dim))
        _slot_recurrence_forward(
            query_old, write_keys, carry, v, old_weights, end_old, end_tok, states, checkpoints, out,
            0, num_chunks, every, delta, value_block, read=True, save=save,
        )  # fmt: skip
        ctx.delta, ctx.value_block, ctx.every = delta, value_block, every
        saved_states = states if every == 1 else checkpoints
        ctx.save_for_backward(query_old, write_keys, carry, v, old_weights, end_old, end_tok, saved_states)
        return out, states[:, :, num_chunks % kept_chunks].clone()

    @staticmethod
    def backward(ctx, d_out, d_final_state):
        query_old, write_keys, carry, v, old_weights, end_old, end_tok, saved_states = ctx.saved_tensors
        batch, heads, num_chunks, chunk, key_dim = query_old.shape
        value_dim, num_slots = v.shape[-1], old_weights.shape[-1]
        num_blocks = triton.cdiv(value_dim, ctx.value_block)
        state_grads = v.new_zeros(batch, heads, 2, num_slots, key_dim, value_dim)
        state_grads[:, :, num_chunks % 2] = d_final_state
        d_query_old = query_old.new_empty(num_blocks, *query_old.shape)
        d_write_keys = torch.empty_like(d_query_old)
        d_carry = carry.new_empty(num_blocks, *carry.shape)
        d_weights = old_weights.new_empty(num_blocks, *old_weights.shape)
        dv = torch.empty_like(v)
        every, d_out = ctx.every, d_out.contiguous()
        segments = [(0, num_chunks)] if every == 1 else [(start, min(every, num_chunks - start))
                                                         for start in range(0, num_chunks, every)]  # fmt: skip
        if every > 1:  # one segment's chunk starts, recomputed from its checkpoint
            segment_states = v.new_empty(batch, heads, min(every, num_chunks) + 1, num_slots, key_dim, value_dim)
        for index in reversed(range(len(segments))):
            first, count = segments[index]
            states = saved_states
            if every > 1:
                states = segment_states
                states[:, :, 0] = saved_states[:, :, index]
                _slot_recurrence_forward(
                    query_old, write_keys, carry, v, old_weights, end_old, end_tok, states, states, None,
                    first, count, every, ctx.delta, ctx.value_block, read=False, save=False,
                )  # fmt: skip
            kernels.slot_recurrence_bwd_kernel[(num_blocks, batch * heads)](
                query_old, write_keys, carry, v, old_weights, end_old, end_tok, states, d_out, state_grads,
                d_query_old, d_write_keys, d_carry, dv, d_weights,
                num_chunks, num_slots, heads, batch * heads, first, count, states.shape[2],
                K=key_dim, V=value_dim, C=chunk, BK=_tile(key_dim), BV=ctx.value_block, DELTA=ctx.delta,
                num_stages=SEQUENTIAL,
            )  # fmt: skip
        return (
            d_query_old.sum(0), d_write_keys.sum(0), d_carry.sum(0), dv, d_weights.sum(0),
            None, None, state_grads[:, :, 0], None, None,
        )  # fmt: skip


def _slot_recurrence_forward(
    query_old, write_keys, carry, v, old_weights, end_old, end_tok, states, checkpoints, out,
    first, count, every, delta, value_block, read, save,
):  # fmt: skip
    """Launch the forward kernel over chunks first .. first + count - 1 (`states[:, :, 0]` their first start)."""
    batch, heads, num_chunks, chunk, key_dim = query_old.shape
    value_dim, num_slots = v.shape[-1], old_weights.shape[-1]
    grid = (triton.cdiv(value_dim, value_block), batch * heads)
    kernels.slot_recurrence_fwd_kernel[grid](
        query_old, write_keys, carry, v, old_weights, end_old, end_tok, states, checkpoints,
        v if out is None else out,
        num_chunks, num_slots, heads, first, count, states.shape[2], checkpoints.shape[2], every,
        K=key_dim, V=value_dim, C=chunk, BK=_tile(key_dim), BV=value_block, DELTA=delta, READ=read, SAVE=save,
        num_stages=SEQUENTIAL,
    )  # fmt: skip


def _slot_weights(slot_map, lam, batch, heads, num_chunks, chunk, num_slots, pad, to_chunks, device):
    """Lambda weights of the old slots (B, H, N, C, S) and of the chunk's tokens (B, H, N, C, C) or None,
    a per-step scale of the in-chunk attention (single slot with lambdas) or None, and the end slot of every
    old slot (B, N, S) and token (B, N, C)."""
    if slot_map is None:
        zeros = torch.zeros(batch, num_chunks, chunk + 1, dtype=torch.long, device=device)
        end_old, end_tok = zeros[..., :1].contiguous(), zeros[..., 1:].contiguous()
        if lam is None:
            ones = torch.ones(batch, heads, num_chunks, chunk, 1, device=device)
            return ones, None, None, end_old, end_tok
        old_weights = to_chunks(lam)
        return old_weights, None, old_weights, end_old, end_tok
    slot_map = pad_time(slot_map, pad)
    if pad:  # padded steps leave the slots in place
        slot_map[:, -pad:] = torch.arange(num_slots, device=slot_map.device)
    index = source_indices(slot_map.reshape(batch, num_chunks, chunk, num_slots), num_slots)  # (B, N, C, S + C)
    written = (index >= 0)[:, None].expand(batch, heads, *index.shape[1:])
    if lam is None:
        weights = written.float()
    else:
        weights = to_chunks(lam).gather(-1, index.clamp_min(0)[:, None].expand_as(written)) * written
    end = index[:, :, -1]
    return (
        weights[..., :num_slots].contiguous(), weights[..., num_slots:].contiguous(), None,
        end[..., :num_slots].contiguous(), end[..., num_slots:].contiguous(),
    )  # fmt: skip


def _triton_multistate(
    q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, delta, chunk_size, last_chunks=None,
    checkpoint_every=None,
):  # fmt: skip
    num_slots = check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state)
    _check_triton_inputs(q, k, v, log_decay, beta, slot_map, lam, initial_state, chunk_size)
    check_checkpoint_every(checkpoint_every)
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    pad = (-seq_len) % chunk_size
    num_chunks = (seq_len + pad) // chunk_size

    def to_chunks(x):  # (B, T, H, ...) -> (B, H, N, C, ...) float32, contiguous; padded steps are identities
        x = pad_time(x.float(), pad).reshape(batch, num_chunks, chunk_size, heads, *x.shape[3:])
        return x.movedim(3, 1).contiguous()

    q_c, k_c, v_c, log_decay_c, beta_c = (to_chunks(x) for x in (q, k, v, log_decay, beta))
    g = log_decay_c.cumsum(-1).contiguous()
    old_weights, token_weights, step_scale, end_old, end_tok = _slot_weights(
        slot_map, lam, batch, heads, num_chunks, chunk_size, num_slots, pad, to_chunks, q.device
    )
    if initial_state is None:
        initial_state = v_c.new_zeros(batch, heads, num_slots, key_dim, value_dim)
    with launch_device(q.device):
        prep = ChunkPrep.apply(q_c, k_c, g, beta_c, delta)
        attn, query_old, write_keys = prep[:3]
        carry = prep[3] if delta else g[..., -1].exp().contiguous()
        if last_chunks is not None:  # packed documents: nothing leaves a document's last chunk (run_documents_chunked)
            keep = (~last_chunks).float()
            carry = carry * (keep[:, None, None] if delta else keep)
            write_keys = write_keys * keep[:, None, None]
        out = IntraAttention.apply(attn, token_weights, v_c)
        every = checkpoint_every or default_checkpoint_every(num_chunks)
        out_inter, final_state = SlotRecurrence.apply(
            query_old, write_keys, carry, v_c, old_weights, end_old, end_tok, initial_state.contiguous(), delta, every
        )
    if step_scale is not None:
        out = out * step_scale
    out = (out + out_inter).movedim(1, 3).reshape(batch, num_chunks * chunk_size, heads, value_dim)[:, :seq_len]
    return out.to(v.dtype), (final_state if output_final_state else None)


def triton_mamba2(
    q,
    k,
    v,
    log_decay,
    beta,
    slot_map=None,
    lam=None,
    initial_state=None,
    output_final_state=True,
    cu_seqlens=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
    checkpoint_every=None,
):
    """Mamba-2 multi-state recurrence with Triton kernels (see `hf_dla.ops` for the signature).

    `checkpoint_every` (Triton only): chunks between the slot states kept for the backward (1 keeps every chunk
    start's; None, the default, about sqrt(T / chunk_size)); the others are recomputed in the backward."""
    multistate = functools.partial(_triton_multistate, checkpoint_every=checkpoint_every)
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens, chunk_size, multistate)
        op = functools.partial(triton_mamba2, checkpoint_every=checkpoint_every)
        return chunk_documents(op, False, q, k, v, log_decay, beta, *args)
    return multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, False, chunk_size)


def triton_gated_delta_rule(
    q,
    k,
    v,
    log_decay,
    beta,
    slot_map=None,
    lam=None,
    initial_state=None,
    output_final_state=True,
    cu_seqlens=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
    checkpoint_every=None,
):
    """Gated DeltaNet multi-state recurrence with Triton kernels (see `hf_dla.ops` for the signature).

    `checkpoint_every` (Triton only): chunks between the slot states kept for the backward (1 keeps every chunk
    start's; None, the default, about sqrt(T / chunk_size)); the others are recomputed in the backward."""
    multistate = functools.partial(_triton_multistate, checkpoint_every=checkpoint_every)
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens, chunk_size, multistate)
        op = functools.partial(triton_gated_delta_rule, checkpoint_every=checkpoint_every)
        return chunk_documents(op, True, q, k, v, log_decay, beta, *args)
    return multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, True, chunk_size)
