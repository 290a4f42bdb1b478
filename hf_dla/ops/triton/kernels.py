"""Triton kernels of the chunked multi-state recurrence (forward and backward).

Three kernel pairs, each the body of one `torch.autograd.Function` in `chunk.py`. Every chunked tensor is
laid out ``(B, H, N, C, D)`` contiguous (N chunks of C tokens) and everything is float32. Notation as in
`hf_dla/ops_chunk.py` (per chunk: ``g`` the in-chunk cumulative log-decay, ``gamma = exp(g)``,
``Gamma[i, j] = exp(g_i - g_j)`` for ``i >= j``, ``dte = gamma_C / gamma``):

1. ``chunk_prep``: one program per (b, h, chunk); the chunk-local WY / UT form.
   ``A`` (C, C) the backbone's in-chunk attention, ``QO`` (C, K) the queries that read the slots of the
   chunk start, ``G`` (C, K) the keys that write the tokens into their end slots, ``M`` (K, K) the
   transition of an old slot over the chunk (Gated DeltaNet; Mamba-2's is the scalar ``gamma_C``) and
   ``T = (I + strict_lower(diag(beta) K K^T * Gamma))^-1`` by forward substitution (kept for the backward).
2. ``intra_attention``: one program per (b, h, chunk); ``o = (A * Wt) @ V``, ``Wt`` the lambda weight of
   every (step, token) pair of the chunk.
3. ``slot_recurrence``: one program per (b, h, block of V columns), sequential over chunks: reads every
   slot state through ``QO`` with the lambda weights of the old slots, carries the slots (``M^T h``),
   moves / merges them to their end slots and writes the chunk's tokens into theirs. For the backward the
   slot states of every R-th chunk start are kept (``(B, H, ceil(N / R), S, K, V)``, R = 1: every chunk
   start's); the backward runs the segments of R chunks in reverse, first recomputing the segment's chunk
   starts from its checkpoint (the forward kernel without the slot reads), then the chunks in reverse with
   the slot gradients double-buffered in global memory. Without gradients only two chunk starts are kept,
   in turn.

The V-column blocks of one (batch, head) each write their partial (C, K), (K, K) and (C, S) gradients to a
slice of their own, which the caller sums, so no atomics are needed.
"""

from __future__ import annotations

import triton
import triton.language as tl

DOT = tl.constexpr("tf32x3")  # float32-accurate products on tensor cores ("ieee" compiles to unrolled FMAs: minutes)


@triton.jit
def _decays(g_ptr, rc, C: tl.constexpr):
    """gamma, dte, Gamma and the last cumulative log-decay of one chunk."""
    g = tl.load(g_ptr + rc)
    g_last = tl.sum(tl.where(rc == C - 1, g, 0.0), 0)
    causal = rc[:, None] >= rc[None, :]
    ratio = tl.exp(tl.where(causal, g[:, None] - g[None, :], float("-inf")))
    return tl.exp(g), tl.exp(g_last - g), ratio, g_last


@triton.jit
def chunk_prep_fwd_kernel(
    q_ptr, k_ptr, g_ptr, beta_ptr, a_ptr, qo_ptr, wk_ptr, m_ptr, t_ptr,
    K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, DELTA: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)  # int64 offsets: long sequences overflow int32
    rc, rk = tl.arange(0, C), tl.arange(0, BK)
    ck = chunk * C * K + rc[:, None] * K + rk[None, :]
    ck_mask = (rk < K)[None, :]
    cc = chunk * C * C + rc[:, None] * C + rc[None, :]
    q = tl.load(q_ptr + ck, mask=ck_mask, other=0.0)
    k = tl.load(k_ptr + ck, mask=ck_mask, other=0.0)
    beta = tl.load(beta_ptr + chunk * C + rc)
    gamma, dte, ratio, g_last = _decays(g_ptr + chunk * C, rc, C)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT) * ratio
    keys_to_end = k * dte[:, None]
    if DELTA:
        kk = tl.dot(k, tl.trans(k), input_precision=DOT) * ratio * beta[:, None]
        lower = tl.where(rc[:, None] > rc[None, :], kk, 0.0)
        # T = (I + lower)^-1, row by row (forward substitution is stable where power series are not).
        t = tl.where(rc[:, None] == rc[None, :], 1.0, 0.0)
        for i in range(1, C):
            lower_row = tl.sum(tl.where(rc[:, None] == i, lower, 0.0), 0)
            row = tl.where(rc == i, 1.0, 0.0) - tl.sum(lower_row[:, None] * t, 0)
            t = tl.where(rc[:, None] == i, row[None, :], t)
        tl.store(t_ptr + cc, t)
        attn = tl.dot(qk, t, input_precision=DOT) * beta[None, :]
        erase = tl.dot(t, k * (beta * gamma)[:, None], input_precision=DOT)  # W
        query_old = gamma[:, None] * q - tl.dot(qk, erase, input_precision=DOT)
        write_keys = tl.dot(tl.trans(t), keys_to_end, input_precision=DOT) * beta[:, None]
        eye = tl.where(rk[:, None] == rk[None, :], tl.exp(g_last), 0.0)
        carry = eye - tl.dot(tl.trans(erase), keys_to_end, input_precision=DOT)
        kk_off = chunk * K * K + rk[:, None] * K + rk[None, :]
        tl.store(m_ptr + kk_off, carry, mask=(rk < K)[:, None] & ck_mask)
    else:
        attn = qk * beta[None, :]
        query_old = gamma[:, None] * q
        write_keys = keys_to_end * beta[:, None]
    tl.store(a_ptr + cc, attn)
    tl.store(qo_ptr + ck, query_old, mask=ck_mask)
    tl.store(wk_ptr + ck, write_keys, mask=ck_mask)


@triton.jit
def chunk_prep_bwd_kernel(
    q_ptr, k_ptr, g_ptr, beta_ptr, t_ptr, da_ptr, dqo_ptr, dwk_ptr, dm_ptr,
    dq_ptr, dk_ptr, dg_ptr, dbeta_ptr,
    K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, DELTA: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)  # int64 offsets: long sequences overflow int32
    rc, rk = tl.arange(0, C), tl.arange(0, BK)
    ck = chunk * C * K + rc[:, None] * K + rk[None, :]
    ck_mask = (rk < K)[None, :]
    cc = chunk * C * C + rc[:, None] * C + rc[None, :]
    q = tl.load(q_ptr + ck, mask=ck_mask, other=0.0)
    k = tl.load(k_ptr + ck, mask=ck_mask, other=0.0)
    beta = tl.load(beta_ptr + chunk * C + rc)
    gamma, dte, ratio, g_last = _decays(g_ptr + chunk * C, rc, C)
    d_attn = tl.load(da_ptr + cc)
    d_query_old = tl.load(dqo_ptr + ck, mask=ck_mask, other=0.0)
    d_write_keys = tl.load(dwk_ptr + ck, mask=ck_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT) * ratio
    keys_to_end = k * dte[:, None]

    # query_old = gamma * q (- qk @ W): the direct part.
    dq = gamma[:, None] * d_query_old
    d_gamma = tl.sum(d_query_old * q, 1)
    if DELTA:
        t = tl.load(t_ptr + cc)
        kk_off = chunk * K * K + rk[:, None] * K + rk[None, :]
        d_carry = tl.load(dm_ptr + kk_off, mask=(rk < K)[:, None] & ck_mask, other=0.0)
        erase_keys = k * (beta * gamma)[:, None]
        erase = tl.dot(t, erase_keys, input_precision=DOT)
        d_attn_b = d_attn * beta[None, :]
        # attn = qk T diag(beta); query_old -= qk W.
        d_qk = tl.dot(d_attn_b, tl.trans(t), input_precision=DOT) - tl.dot(
            d_query_old, tl.trans(erase), input_precision=DOT
        )
        d_t = tl.dot(tl.trans(qk), d_attn_b, input_precision=DOT)
        d_beta = tl.sum(d_attn * tl.dot(qk, t, input_precision=DOT), 0)
        d_erase = -tl.dot(tl.trans(qk), d_query_old, input_precision=DOT)
        # carry M = gamma_C I - W^T X  (X = dte * k).
        d_g_last = tl.sum(tl.sum(tl.where(rk[:, None] == rk[None, :], d_carry, 0.0), 1), 0) * tl.exp(g_last)
        d_erase -= tl.dot(keys_to_end, tl.trans(d_carry), input_precision=DOT)
        d_keys_to_end = -tl.dot(erase, d_carry, input_precision=DOT)
        # write_keys = diag(beta) T^T X.
        d_write_b = d_write_keys * beta[:, None]
        d_keys_to_end += tl.dot(t, d_write_b, input_precision=DOT)
        d_t += tl.dot(keys_to_end, tl.trans(d_write_b), input_precision=DOT)
        d_beta += tl.sum(d_write_keys * tl.dot(tl.trans(t), keys_to_end, input_precision=DOT), 1)
        # W = T diag(beta gamma) k.
        d_t += tl.dot(d_erase, tl.trans(erase_keys), input_precision=DOT)
        d_erase_keys = tl.dot(tl.trans(t), d_erase, input_precision=DOT)
        dk = (beta * gamma)[:, None] * d_erase_keys
        d_bg = tl.sum(d_erase_keys * k, 1)
        d_beta += gamma * d_bg
        d_gamma += beta * d_bg
        # T = (I + L)^-1  =>  dL = -T^T dT T^T on the strict lower triangle; L = diag(beta) (k k^T * Gamma).
        d_lower = -tl.dot(tl.trans(t), tl.dot(d_t, tl.trans(t), input_precision=DOT), input_precision=DOT)
        kk = tl.dot(k, tl.trans(k), input_precision=DOT) * ratio
        d_lower = tl.where(rc[:, None] > rc[None, :], d_lower, 0.0)
        d_beta += tl.sum(d_lower * kk, 1)
        d_kk = d_lower * beta[:, None] * ratio
        dk += tl.dot(d_kk, k, input_precision=DOT) + tl.dot(tl.trans(d_kk), k, input_precision=DOT)
        d_log_ratio = d_lower * beta[:, None] * kk
        dg = tl.sum(d_log_ratio, 1) - tl.sum(d_log_ratio, 0)
    else:
        # attn = qk diag(beta); write_keys = (beta dte) k; the carry gamma_C is differentiated by the caller.
        d_qk = d_attn * beta[None, :]
        d_beta = tl.sum(d_attn * qk, 0)
        d_keys_to_end = d_write_keys * beta[:, None]
        d_beta += tl.sum(d_write_keys * keys_to_end, 1)
        dk = tl.zeros([C, BK], dtype=tl.float32)
        dg = tl.zeros([C], dtype=tl.float32)
        d_g_last = 0.0
    # keys_to_end = dte * k.
    dk += dte[:, None] * d_keys_to_end
    d_dte = tl.sum(d_keys_to_end * k, 1)
    # qk = (q k^T) * Gamma.
    d_qk_raw = d_qk * ratio
    dq += tl.dot(d_qk_raw, k, input_precision=DOT)
    dk += tl.dot(tl.trans(d_qk_raw), q, input_precision=DOT)
    d_log_ratio = d_qk * qk
    dg += tl.sum(d_log_ratio, 1) - tl.sum(d_log_ratio, 0)
    dg += d_gamma * gamma - d_dte * dte
    d_g_last += tl.sum(d_dte * dte, 0)
    dg += tl.where(rc == C - 1, d_g_last, 0.0)
    tl.store(dq_ptr + ck, dq, mask=ck_mask)
    tl.store(dk_ptr + ck, dk, mask=ck_mask)
    tl.store(dg_ptr + chunk * C + rc, dg)
    tl.store(dbeta_ptr + chunk * C + rc, d_beta)


@triton.jit
def intra_attention_fwd_kernel(
    a_ptr, wt_ptr, v_ptr, o_ptr,
    V: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)  # int64 offsets: long sequences overflow int32
    rc, rv = tl.arange(0, C), tl.arange(0, BV)
    cc = chunk * C * C + rc[:, None] * C + rc[None, :]
    cv = chunk * C * V + rc[:, None] * V + rv[None, :]
    cv_mask = (rv < V)[None, :]
    attn = tl.load(a_ptr + cc)
    if HAS_WEIGHTS:
        attn *= tl.load(wt_ptr + cc)
    v = tl.load(v_ptr + cv, mask=cv_mask, other=0.0)
    tl.store(o_ptr + cv, tl.dot(attn, v, input_precision=DOT), mask=cv_mask)


@triton.jit
def intra_attention_bwd_kernel(
    a_ptr, wt_ptr, v_ptr, do_ptr, da_ptr, dwt_ptr, dv_ptr,
    V: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)  # int64 offsets: long sequences overflow int32
    rc, rv = tl.arange(0, C), tl.arange(0, BV)
    cc = chunk * C * C + rc[:, None] * C + rc[None, :]
    cv = chunk * C * V + rc[:, None] * V + rv[None, :]
    cv_mask = (rv < V)[None, :]
    attn = tl.load(a_ptr + cc)
    v = tl.load(v_ptr + cv, mask=cv_mask, other=0.0)
    do = tl.load(do_ptr + cv, mask=cv_mask, other=0.0)
    d_weighted = tl.dot(do, tl.trans(v), input_precision=DOT)
    if HAS_WEIGHTS:
        weights = tl.load(wt_ptr + cc)
        tl.store(dwt_ptr + cc, d_weighted * attn)
        d_weighted *= weights
        attn *= weights
    tl.store(da_ptr + cc, d_weighted)
    tl.store(dv_ptr + cv, tl.dot(tl.trans(attn), do, input_precision=DOT), mask=cv_mask)


@triton.jit
def _state_offsets(slot, rk, cols, K: tl.constexpr, V: tl.constexpr):
    return slot * K * V + rk[:, None] * V + cols[None, :]


# Sizes that change with the batch, the sequence length and the checkpoint spacing are not specialised on (Triton would
# compile a variant for a value of 1 and for one divisible by 16): one compiled kernel serves every length, and the
# kernels compiled ahead of time (hf_dla.ops.triton.aot) or by the first call are the ones every later call uses.
SIZE_ARGS = ["N", "NUM_HEADS", "FIRST", "COUNT", "KEPT_CHUNKS"]


@triton.jit(do_not_specialize=[*SIZE_ARGS, "NUM_CHECKPOINTS", "EVERY"])
def slot_recurrence_fwd_kernel(
    qo_ptr, wk_ptr, carry_ptr, v_ptr, w_ptr, end_old_ptr, end_tok_ptr, h_ptr, ckpt_ptr, o_ptr,
    N, S, NUM_HEADS, FIRST, COUNT, KEPT_CHUNKS, NUM_CHECKPOINTS, EVERY,
    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
    READ: tl.constexpr, SAVE: tl.constexpr,
):  # fmt: skip
    """Chunks FIRST .. FIRST + COUNT - 1 of N. h_ptr (B, H, KEPT_CHUNKS, S, K, V) holds the slots of chunk start
    FIRST at index 0 on entry and those of chunk start FIRST + i at index i % KEPT_CHUNKS after. READ: compute
    the slot reads (o); a backward's recompute skips them. SAVE: also copy the slots of every chunk start that is
    a multiple of EVERY into ckpt_ptr (B, H, NUM_CHECKPOINTS, S, K, V), index start // EVERY."""
    block, bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    batch = bh // NUM_HEADS
    rc, rk, cols = tl.arange(0, C), tl.arange(0, BK), block * BV + tl.arange(0, BV)
    ck_mask = (rk < K)[None, :]
    cv_mask = (cols < V)[None, :]
    kv_mask = (rk < K)[:, None] & cv_mask
    for i in range(COUNT):
        n = FIRST + i
        chunk = bh * N + n
        ck = chunk * C * K + rc[:, None] * K + rk[None, :]
        cv = chunk * C * V + rc[:, None] * V + cols[None, :]
        # Slots at the chunk start and at the next one's: all kept (KEPT_CHUNKS = COUNT + 1), else two in turn.
        first_slot = (bh * KEPT_CHUNKS + i % KEPT_CHUNKS) * S
        next_slot = (bh * KEPT_CHUNKS + (i + 1) % KEPT_CHUNKS) * S
        v = tl.load(v_ptr + cv, mask=cv_mask, other=0.0)
        if READ:  # every slot read with its lambda weight
            query_old = tl.load(qo_ptr + ck, mask=ck_mask, other=0.0)
            o = tl.zeros([C, BV], dtype=tl.float32)
            for s in range(S):
                h = tl.load(h_ptr + _state_offsets(first_slot + s, rk, cols, K, V), mask=kv_mask, other=0.0)
                weight = tl.load(w_ptr + (chunk * C + rc) * S + s)
                o += weight[:, None] * tl.dot(query_old, h, input_precision=DOT)
            tl.store(o_ptr + cv, o, mask=cv_mask)
        # Tokens land in their end slots.
        write_keys = tl.load(wk_ptr + ck, mask=ck_mask, other=0.0)
        end_tok = tl.load(end_tok_ptr + (batch * N + n) * C + rc)
        for e in range(S):
            keys_e = tl.where((end_tok == e)[:, None], write_keys, 0.0)
            new = tl.dot(tl.trans(keys_e), v, input_precision=DOT)
            tl.store(h_ptr + _state_offsets(next_slot + e, rk, cols, K, V), new, mask=kv_mask)
        tl.debug_barrier()
        # Old slots are carried over the chunk and added into their end slots (moves and merges).
        if DELTA:
            carry_t = tl.load(
                carry_ptr + chunk * K * K + rk[None, :] * K + rk[:, None], mask=(rk < K)[:, None] & ck_mask, other=0.0
            )
        else:
            decay = tl.load(carry_ptr + chunk)
        for s in range(S):
            h = tl.load(h_ptr + _state_offsets(first_slot + s, rk, cols, K, V), mask=kv_mask, other=0.0)
            if DELTA:
                h = tl.dot(carry_t, h, input_precision=DOT)
            else:
                h = decay * h
            end = tl.load(end_old_ptr + (batch * N + n) * S + s)
            target = h_ptr + _state_offsets(next_slot + end, rk, cols, K, V)
            tl.store(target, tl.load(target, mask=kv_mask, other=0.0) + h, mask=kv_mask)
            tl.debug_barrier()
        if SAVE:
            if ((n + 1) % EVERY == 0) & (n + 1 < N):
                saved = (bh * NUM_CHECKPOINTS + (n + 1) // EVERY) * S
                for s in range(S):
                    h = tl.load(h_ptr + _state_offsets(next_slot + s, rk, cols, K, V), mask=kv_mask, other=0.0)
                    tl.store(ckpt_ptr + _state_offsets(saved + s, rk, cols, K, V), h, mask=kv_mask)


@triton.jit(do_not_specialize=[*SIZE_ARGS, "NUM_BH"])
def slot_recurrence_bwd_kernel(
    qo_ptr, wk_ptr, carry_ptr, v_ptr, w_ptr, end_old_ptr, end_tok_ptr, h_ptr, do_ptr, dh_ptr,
    dqo_ptr, dwk_ptr, dcarry_ptr, dv_ptr, dw_ptr,
    N, S, NUM_HEADS, NUM_BH, FIRST, COUNT, KEPT_CHUNKS,
    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
):  # fmt: skip
    """Chunks FIRST + COUNT - 1 down to FIRST, their start slots at h_ptr (B, H, KEPT_CHUNKS, S, K, V), index
    n - FIRST. dh_ptr: (B, H, 2, S, K, V), parity ((FIRST + COUNT) % 2) holding the gradient of the slots after
    the last chunk on entry; parity (FIRST % 2) holds that of chunk start FIRST's on exit (the initial state's for
    FIRST = 0), so consecutive launches hand it on. Per-block gradients go to slice ``block`` of
    dqo/dwk/dcarry/dw."""
    block, bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    batch = bh // NUM_HEADS
    rc, rk, cols = tl.arange(0, C), tl.arange(0, BK), block * BV + tl.arange(0, BV)
    ck_mask = (rk < K)[None, :]
    cv_mask = (cols < V)[None, :]
    kv_mask = (rk < K)[:, None] & cv_mask
    kk_mask = (rk < K)[:, None] & ck_mask
    part = block * NUM_BH * N  # first chunk of this block's gradient slice
    for i in range(COUNT):
        n = FIRST + COUNT - 1 - i
        chunk = bh * N + n
        ck = chunk * C * K + rc[:, None] * K + rk[None, :]
        cv = chunk * C * V + rc[:, None] * V + cols[None, :]
        first_slot = (bh * KEPT_CHUNKS + n - FIRST) * S
        grad_next = (bh * 2 + (n + 1) % 2) * S  # gradients of the next chunk's start slots
        grad_here = (bh * 2 + n % 2) * S
        query_old = tl.load(qo_ptr + ck, mask=ck_mask, other=0.0)
        write_keys = tl.load(wk_ptr + ck, mask=ck_mask, other=0.0)
        v = tl.load(v_ptr + cv, mask=cv_mask, other=0.0)
        do = tl.load(do_ptr + cv, mask=cv_mask, other=0.0)
        end_tok = tl.load(end_tok_ptr + (batch * N + n) * C + rc)
        d_write_keys = tl.zeros([C, BK], dtype=tl.float32)
        dv = tl.zeros([C, BV], dtype=tl.float32)
        for e in range(S):
            dh = tl.load(dh_ptr + _state_offsets(grad_next + e, rk, cols, K, V), mask=kv_mask, other=0.0)
            lands = (end_tok == e)[:, None]
            d_write_keys += tl.where(lands, tl.dot(v, tl.trans(dh), input_precision=DOT), 0.0)
            dv += tl.dot(tl.where(lands, write_keys, 0.0), dh, input_precision=DOT)
        tl.store(dwk_ptr + (part + chunk) * C * K + rc[:, None] * K + rk[None, :], d_write_keys, mask=ck_mask)
        tl.store(dv_ptr + cv, dv, mask=cv_mask)
        if DELTA:
            carry = tl.load(carry_ptr + chunk * K * K + rk[:, None] * K + rk[None, :], mask=kk_mask, other=0.0)
            d_carry = tl.zeros([BK, BK], dtype=tl.float32)
        else:
            decay = tl.load(carry_ptr + chunk)
            d_decay = 0.0
        d_query_old = tl.zeros([C, BK], dtype=tl.float32)
        for s in range(S):
            h = tl.load(h_ptr + _state_offsets(first_slot + s, rk, cols, K, V), mask=kv_mask, other=0.0)
            end = tl.load(end_old_ptr + (batch * N + n) * S + s)
            dh_end = tl.load(dh_ptr + _state_offsets(grad_next + end, rk, cols, K, V), mask=kv_mask, other=0.0)
            weight = tl.load(w_ptr + (chunk * C + rc) * S + s)
            weighted_do = weight[:, None] * do
            dh = tl.dot(tl.trans(query_old), weighted_do, input_precision=DOT)
            d_query_old += tl.dot(weighted_do, tl.trans(h), input_precision=DOT)
            read = tl.dot(query_old, h, input_precision=DOT)
            tl.store(dw_ptr + ((part + chunk) * C + rc) * S + s, tl.sum(do * read, 1))
            if DELTA:
                dh += tl.dot(carry, dh_end, input_precision=DOT)
                d_carry += tl.dot(h, tl.trans(dh_end), input_precision=DOT)
            else:
                dh += decay * dh_end
                d_decay += tl.sum(tl.sum(h * dh_end, 1), 0)
            tl.store(dh_ptr + _state_offsets(grad_here + s, rk, cols, K, V), dh, mask=kv_mask)
        tl.store(dqo_ptr + (part + chunk) * C * K + rc[:, None] * K + rk[None, :], d_query_old, mask=ck_mask)
        if DELTA:
            tl.store(dcarry_ptr + (part + chunk) * K * K + rk[:, None] * K + rk[None, :], d_carry, mask=kk_mask)
        else:
            tl.store(dcarry_ptr + part + chunk, d_decay)
        tl.debug_barrier()
