"""Per-token multi-state recurrence: the ground truth for every other backend, and the decoding step.

Public path: ``hf_dla.ops.naive``. The file sits flat beside ``modeling_dla.py`` because ``save_pretrained``
copies a custom model's flat relative imports into the saved folder (``trust_remote_code`` loading).
The signature and the recurrence are documented in ``hf_dla/ops/__init__.py``; the input checks and the packed
documents (``cu_seqlens``) are shared with the other backends in ``ops_utils.py``.
"""

from __future__ import annotations

import torch

from .ops_utils import check_shapes, run_documents


def remap_slots(state: torch.Tensor, step_map: torch.Tensor) -> torch.Tensor:
    """Move (and merge, by addition) the slots of `state` (B, H, S, K, V) along `step_map` (B, S)."""
    num_slots = state.shape[2]
    move = torch.nn.functional.one_hot(step_map, num_slots).to(state.dtype)  # (B, S_old, S_new)
    return torch.einsum("bsn,bhskv->bhnkv", move, state)


def _naive_multistate(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state, delta_rule):
    num_slots = check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state)
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
