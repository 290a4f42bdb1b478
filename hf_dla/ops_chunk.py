"""Chunked multi-state recurrence in PyTorch: the CPU training path, differentiable through autograd.

Public path: ``hf_dla.ops.chunk`` (flat file for ``trust_remote_code``, see ``ops_naive.py``). Same signature
and semantics as the naive recurrence (`hf_dla/ops/__init__.py`). The chunked layout that the Triton backend shares
(slot indices inside a chunk, chunk-aligned packed documents) is in ``ops_utils.py``.

Both backbones are linear in their values, so every output is ``o_t = sum_i lam_t[index_t(i)] A[t, i] v_i``
where ``A`` is the backbone's own (causal) attention matrix and ``index_t(i)`` the slot index that token
``i`` has at step ``t``. Per chunk of ``C`` tokens (``G`` the in-chunk cumulative log-decay,
``Gamma[t, i] = exp(G_t - G_i)`` for ``i <= t``):

- Gated DeltaNet (WY / UT form): ``Tm = (I + strict_lower(diag(beta) K K^T * Gamma))^-1``,
  ``A = (Q K^T * Gamma) Tm diag(beta)``; an old slot ``h`` is read through ``q~ = gamma q - (Q K^T * Gamma) W``
  with ``W = Tm diag(beta gamma) K``, and leaves the chunk as ``M^T h`` with
  ``M = gamma_C I - W^T diag(gamma_C / gamma) K``; token ``i`` leaves ``g_i v_i^T`` in its end slot with
  ``G = diag(beta) Tm^T diag(gamma_C / gamma) K``.
- Mamba-2 is the same with ``Tm = I`` and no erase term.

The slot index of every source (the old slots of the chunk and its tokens) at every step is obtained by
composing the ``slot_map`` rows inside the chunk (C small gathers, all chunks at once). The chunks are then
chained through their slot states, one matmul per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops_utils import check_shapes, chunk_documents, pad_time, source_indices

DEFAULT_CHUNK_SIZE = 64


def _chunk_multistate(
    q,
    k,
    v,
    log_decay,
    beta,
    slot_map,
    lam,
    initial_state,
    output_final_state,
    delta_rule,
    chunk_size,
    last_chunks=None,
):
    num_slots = check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state)
    batch, seq_len, heads, key_dim = q.shape
    value_dim, out_dtype = v.shape[-1], v.dtype
    chunk = min(chunk_size, max(seq_len, 1))
    pad = (-seq_len) % chunk
    num_chunks = (seq_len + pad) // chunk
    device = q.device

    # Padded steps are identities: no decay, no write, slots stay in place.
    def to_chunks(x):  # (B, T, H, ...) -> (B, H, N, C, ...)
        x = pad_time(x.float(), pad)
        x = x.reshape(batch, num_chunks, chunk, heads, *x.shape[3:])
        return x.movedim(3, 1)

    q, k, v, log_decay, beta = (to_chunks(x) for x in (q, k, v, log_decay, beta))
    cum = log_decay.cumsum(-1)  # (B, H, N, C)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()
    gamma = cum.exp()
    decay_to_end = (cum[..., -1:] - cum).exp()  # gamma_C / gamma_i, <= 1
    ratio = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    qk = (q @ k.transpose(-1, -2)) * ratio

    eye = torch.eye(chunk, device=device)
    if delta_rule:
        kk = (k @ k.transpose(-1, -2)) * ratio * beta[..., :, None]
        strict = kk.tril(-1)
        transform = torch.linalg.solve_triangular(eye + strict, eye.expand_as(strict), upper=False, unitriangular=True)
        attn = (qk @ transform) * beta[..., None, :]
        erase = transform @ (k * (beta * gamma)[..., None])  # W
        query_old = gamma[..., None] * q - qk @ erase
        write_keys = (transform.transpose(-1, -2) @ (k * decay_to_end[..., None])) * beta[..., None]
        carry = gamma[..., -1, None, None] * torch.eye(key_dim, device=device) - erase.transpose(-1, -2) @ (
            k * decay_to_end[..., None]
        )  # M (B, H, N, K, K)
    else:
        attn = qk * beta[..., None, :]
        query_old = gamma[..., None] * q
        write_keys = k * (beta * decay_to_end)[..., None]
        carry = None
    chunk_decay = gamma[..., -1]
    if last_chunks is not None:  # packed documents: nothing leaves a document's last chunk (see run_documents_chunked)
        keep = (~last_chunks).float()
        chunk_decay, write_keys = chunk_decay * keep, write_keys * keep[:, None, None]
        carry = None if carry is None else carry * keep[:, None, None]

    if slot_map is None:  # one slot: the read weight depends on the step only
        weight_old = None if lam is None else to_chunks(lam)  # (B, H, N, C, 1)
        o_intra = attn @ v if lam is None else weight_old * (attn @ v)
        token_end = None
        to_end_slot = None
    else:
        slot_map = pad_time(slot_map, pad)
        identity_rows = torch.arange(num_slots, device=device).expand(batch, pad, num_slots)
        if pad:
            slot_map[:, seq_len:] = identity_rows
        slot_map = slot_map.reshape(batch, num_chunks, chunk, num_slots)
        index = source_indices(slot_map, num_slots)  # (B, N, C, S + C)
        if lam is None:
            weights = (index >= 0).float()[:, None].expand(batch, heads, *index.shape[1:])
        else:
            lam_chunks = to_chunks(lam)  # (B, H, N, C, S)
            idx = index.clamp_min(0)[:, None].expand(batch, heads, *index.shape[1:])
            weights = lam_chunks.gather(-1, idx) * (index >= 0)[:, None]
        weight_old, weight_tokens = weights[..., :num_slots], weights[..., num_slots:]
        o_intra = (attn * weight_tokens) @ v
        end_index = index[:, :, -1]  # (B, N, S + C)
        to_end_slot = F.one_hot(end_index[..., :num_slots], num_slots).float()  # (B, N, S_old, S_new)
        token_end = F.one_hot(end_index[..., num_slots:], num_slots).float()  # (B, N, C, S_new)

    if initial_state is None:
        state = q.new_zeros(batch, heads, num_slots, key_dim, value_dim)
    else:
        state = initial_state.float()

    def per_chunk(x, dim):  # unbind once: indexing inside the loop would make backward O(N^2)
        return [None] * num_chunks if x is None else x.unbind(dim)

    outputs = []
    for query_n, intra_n, weight_n, carry_n, decay_n, move_n, keys_n, values_n, end_n in zip(
        query_old.unbind(2),
        o_intra.unbind(2),
        per_chunk(weight_old, 2),
        per_chunk(carry, 2),
        chunk_decay.unbind(2),
        per_chunk(to_end_slot, 1),
        write_keys.unbind(2),
        v.unbind(2),
        per_chunk(token_end, 1),
    ):
        if weight_n is None:
            outputs.append(intra_n + query_n @ state.sum(2))
        else:  # sum_s w[c, s] q_c^T h_s as one matmul over the (slot, key) pairs
            weighted_query = (weight_n[..., :, None] * query_n[..., None, :]).flatten(-2)
            outputs.append(intra_n + weighted_query @ state.flatten(2, 3))
        if carry_n is None:
            state = decay_n[..., None, None, None] * state
        else:
            state = torch.einsum("bhij,bhsiv->bhsjv", carry_n, state)
        if move_n is not None:
            state = torch.einsum("bse,bhskv->bhekv", move_n, state)
        # The chunk's own tokens, each in the slot it ends the chunk in (built per chunk: (S, K, V) each).
        if end_n is None:
            state = state + (keys_n.transpose(-1, -2) @ values_n)[:, :, None]
        else:
            state = state + torch.einsum("bce,bhck,bhcv->bhekv", end_n, keys_n, values_n)
    out = torch.stack(outputs, dim=2)  # (B, H, N, C, V)
    out = out.movedim(1, 3).reshape(batch, num_chunks * chunk, heads, value_dim)[:, :seq_len]
    return out.to(out_dtype), (state if output_final_state else None)


def chunk_mamba2(
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
):
    """Mamba-2 multi-state recurrence, chunked (see `hf_dla.ops` for the signature)."""
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens, chunk_size)
        return chunk_documents(chunk_mamba2, False, q, k, v, log_decay, beta, *args, _chunk_multistate)
    return _chunk_multistate(
        q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, False, chunk_size
    )


def chunk_gated_delta_rule(
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
):
    """Gated DeltaNet multi-state recurrence, chunked (see `hf_dla.ops` for the signature)."""
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens, chunk_size)
        return chunk_documents(chunk_gated_delta_rule, True, q, k, v, log_decay, beta, *args, _chunk_multistate)
    return _chunk_multistate(
        q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, True, chunk_size
    )
