"""Per-token multi-state recurrence: the ground truth for every other backend, and the decoding step.

Public path: ``hf_dla.ops.naive``. The file sits flat beside ``modeling_dla.py`` because ``save_pretrained``
copies a custom model's flat relative imports into the saved folder (``trust_remote_code`` loading).
The signature and the recurrence are documented in ``hf_dla/ops/__init__.py``.
"""

from __future__ import annotations

import torch

# ----------------------------------------------------------------------------------------------------------
# Packed documents (fla-style ``cu_seqlens``)
# ----------------------------------------------------------------------------------------------------------


def check_cu_seqlens(cu_seqlens: torch.Tensor, seq_len: int, batch: int = 1) -> torch.Tensor:
    """Validate fla-style cumulative document lengths over a packed row of `seq_len` tokens; return them as int64."""
    if batch != 1:
        raise ValueError(
            f"cu_seqlens describes documents packed into ONE row, so the batch size must be 1; got {batch}. "
            "Flatten the batch into one row (the model does this for position_ids / seq_idx / cu_seq_lens_q)."
        )
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor [0, end_1, ..., T] with at least 2 entries; got "
            f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}."
        )
    cu_seqlens = cu_seqlens.long()
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != seq_len or any(b > a for a, b in zip(bounds[1:], bounds)):
        raise ValueError(
            f"cu_seqlens must rise from 0 to the packed length {seq_len} (document i is tokens "
            f"cu_seqlens[i]:cu_seqlens[i + 1]); got {bounds}."
        )
    return cu_seqlens


def documents_to_batch(x: torch.Tensor, cu_seqlens: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """(1, T, ...) packed documents -> (N, L, ...) one document per row, right-padded with `fill` to the longest L.

    `fill` is a scalar or a tensor of shape ``x.shape[2:]`` (the identity slot map, say). Differentiable."""
    lengths = cu_seqlens.diff()
    longest = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(longest, device=x.device)
    inside = steps < lengths[:, None].to(x.device)  # (N, L)
    index = (cu_seqlens[:-1, None].to(x.device) + steps).clamp_max(max(x.shape[1] - 1, 0))
    rows = x[0, index]  # (N, L, ...)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(inside.reshape(*inside.shape, *[1] * (x.ndim - 2)), rows, fill)


def batch_to_documents(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of `documents_to_batch`: (N, L, ...) -> (1, T, ...), dropping the right padding."""
    lengths = cu_seqlens.diff().to(x.device)
    inside = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
    return x[inside][None]


def run_documents(op, q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, cu_seqlens, **kw):
    """Run `op` on each packed document alone: the state (and the slots) restart at every document start.

    The documents are laid out as a right-padded batch (N, L) whose padded steps are identities (no decay, no
    write, slots in place), so every backend runs its batched path unchanged: a packed row costs what the padded
    batch of its documents costs. `initial_state` / the final state are (N, H, S, K, V), one per document."""
    cu_seqlens = check_cu_seqlens(cu_seqlens, q.shape[1], q.shape[0])
    num_docs = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape[0] != num_docs:
        raise ValueError(
            f"with cu_seqlens, initial_state holds one state per document: ({num_docs}, H, S, K, V); got "
            f"{tuple(initial_state.shape)}."
        )
    unpack = [documents_to_batch(x, cu_seqlens) for x in (q, k, v, log_decay, beta)]
    if slot_map is not None:
        slot_map = documents_to_batch(slot_map, cu_seqlens, torch.arange(slot_map.shape[-1], device=slot_map.device))
    if lam is not None:
        lam = documents_to_batch(lam, cu_seqlens)
    out, final_state = op(*unpack, slot_map, lam, initial_state, output_final_state=output_final_state, **kw)
    return batch_to_documents(out, cu_seqlens), final_state


def _check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state) -> int:
    """Validate the shared op signature; return the number of slots S."""
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, T, H, K); got {tuple(q.shape)} and {tuple(k.shape)}.")
    batch, seq_len, heads, _ = q.shape
    if v.ndim != 4 or v.shape[:3] != (batch, seq_len, heads):
        raise ValueError(f"v must be (B, T, H, V) = ({batch}, {seq_len}, {heads}, V); got {tuple(v.shape)}.")
    for name, gate in (("log_decay", log_decay), ("beta", beta)):
        if gate.shape != (batch, seq_len, heads):
            raise ValueError(f"{name} must be (B, T, H) = {(batch, seq_len, heads)}; got {tuple(gate.shape)}.")
    num_slots = 1 if slot_map is None else slot_map.shape[-1]
    if slot_map is not None and (slot_map.shape[:2] != (batch, seq_len) or slot_map.dtype != torch.long):
        raise ValueError(f"slot_map must be an int64 (B, T, S) tensor; got {slot_map.dtype} {tuple(slot_map.shape)}.")
    if lam is not None and lam.shape != (batch, seq_len, heads, num_slots):
        raise ValueError(f"lam must be (B, T, H, S) = {(batch, seq_len, heads, num_slots)}; got {tuple(lam.shape)}.")
    expected_state = (batch, heads, num_slots, q.shape[-1], v.shape[-1])
    if initial_state is not None and initial_state.shape != expected_state:
        raise ValueError(
            f"initial_state must be (B, H, S, K, V) = {expected_state}; got {tuple(initial_state.shape)}."
        )
    return num_slots


def remap_slots(state: torch.Tensor, step_map: torch.Tensor) -> torch.Tensor:
    """Move (and merge, by addition) the slots of `state` (B, H, S, K, V) along `step_map` (B, S)."""
    num_slots = state.shape[2]
    move = torch.nn.functional.one_hot(step_map, num_slots).to(state.dtype)  # (B, S_old, S_new)
    return torch.einsum("bsn,bhskv->bhnkv", move, state)


def _naive_multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, delta_rule):
    num_slots = _check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state)
    batch, seq_len, heads, key_dim = q.shape
    value_dim, out_dtype = v.shape[-1], v.dtype
    q, k, v, log_decay, beta = (x.float() for x in (q, k, v, log_decay, beta))
    if initial_state is None:
        state = q.new_zeros(batch, heads, num_slots, key_dim, value_dim)
    else:
        state = initial_state.float()
    newest = torch.zeros(num_slots, device=q.device)
    newest[0] = 1.0
    outputs = []
    for t in range(seq_len):
        if slot_map is not None:
            state = remap_slots(state, slot_map[:, t])
        decay = log_decay[:, t].exp()[:, :, None, None, None]
        k_t, v_t, beta_t = k[:, t], v[:, t], beta[:, t, :, None, None]
        if delta_rule:
            # Each slot erases its own content along k_t: the slots still sum to the backbone state.
            k_state = torch.einsum("bhk,bhskv->bhsv", k_t, state)
            state = state - beta_t[:, :, None] * k_t[:, :, None, :, None] * k_state[:, :, :, None, :]
        state = decay * state
        write = beta_t * k_t[..., :, None] * v_t[..., None, :]  # (B, H, K, V)
        state = state + write[:, :, None] * newest[:, None, None]
        read = torch.einsum("bhk,bhskv->bhsv", q[:, t], state)
        if lam is None:
            outputs.append(read.sum(2))
        else:
            outputs.append(torch.einsum("bhs,bhsv->bhv", lam[:, t].float(), read))
    out = torch.stack(outputs, dim=1).to(out_dtype)
    return out, (state if output_final_state else None)


def naive_mamba2(
    q, k, v, log_decay, beta, slot_map=None, lam=None, initial_state=None, output_final_state=True, cu_seqlens=None
):
    """Mamba-2 multi-state recurrence, token by token (see `hf_dla.ops` for the signature)."""
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens)
        return run_documents(naive_mamba2, q, k, v, log_decay, beta, *args)
    return _naive_multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, False)


def naive_gated_delta_rule(
    q, k, v, log_decay, beta, slot_map=None, lam=None, initial_state=None, output_final_state=True, cu_seqlens=None
):
    """Gated DeltaNet multi-state recurrence, token by token (see `hf_dla.ops` for the signature)."""
    if cu_seqlens is not None:
        args = (slot_map, lam, initial_state, output_final_state, cu_seqlens)
        return run_documents(naive_gated_delta_rule, q, k, v, log_decay, beta, *args)
    return _naive_multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, True)
