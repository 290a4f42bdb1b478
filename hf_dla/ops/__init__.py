"""Multi-state linear-attention ops: one signature, several backends (fla-style).

Every backend exposes two functions with the SAME signature, one per backbone:

    {backend}_mamba2(q, k, v, log_decay, beta, slot_map=None, lam=None, initial_state=None,
                     output_final_state=True, cu_seqlens=None) -> (o, final_state)
    {backend}_gated_delta_rule(...same...) -> (o, final_state)

with backend in ``naive`` (per-token recurrence: the ground truth and the decoding step),
``chunk`` (chunked PyTorch: the CPU training path) and ``triton`` (GPU kernels). ``chunk_*`` (and the
``triton_*`` functions that ``hf_dla.ops.triton`` must export: ``triton_mamba2``, ``triton_gated_delta_rule``)
also take a keyword ``chunk_size``; the model passes ``config.chunk_size``. `get_multistate_op(backend, mixer)`
returns the function the model uses; decoding one token from a cache always uses the naive step.

Shapes (B batch, T tokens, H heads, K key dim, V value dim, S memory slots):

- ``q``, ``k``: ``(B, T, H, K)``. The ops neither normalise nor scale: Gated DeltaNet callers pass
  L2-normalised keys and queries already multiplied by ``K ** -0.5``.
- ``v``: ``(B, T, H, V)``.
- ``log_decay``: ``(B, T, H)``, ``<= 0``; the state transition is ``exp(log_decay)``
  (Mamba-2: ``dt * A``; Gated DeltaNet: ``log(alpha) = g``).
- ``beta``: ``(B, T, H)``, write strength (Mamba-2: ``dt``; Gated DeltaNet: ``beta``).
- ``slot_map``: ``(B, T, S)`` int64, or ``None`` for a single slot (the vanilla backbone, ``S = 1``).
  The memory plan (``hf_dla.memory_plans``) produces it from the keys before the recurrence.
  ``slot_map[b, t, s]`` is the slot index that the slot with index ``s`` after step ``t - 1`` takes at step
  ``t``; several slots mapping to one index merge (their states add). It is applied before token ``t``
  is written, and token ``t`` is always written into slot 0. The slot index is the lambda index: the
  recency rank for ``dla``, the Fenwick level for ``loglinear``.
- ``lam``: ``(B, T, H, S)`` read weights, or ``None`` for all ones.
- ``initial_state`` / ``final_state``: ``(B, H, S, K, V)`` float32 (fla's ``[K, V]`` state layout),
  ``None`` for zeros / when ``output_final_state=False``.
- ``o``: ``(B, T, H, V)`` in the dtype of ``v``.
- ``cu_seqlens``: packed documents, as in fla: ``(N + 1,)`` integers rising from 0 to ``T``; the inputs are one row
  (``B = 1``) and document ``i`` is tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``. Every document starts from its own
  initial state (``initial_state`` and the final state are then ``(N, H, S, K, V)``), and nothing passes from one
  document to the next. The slot map comes from ``plan.plan_documents``, which also restarts at each document.
  With no initial or final state (training), ``chunk`` and ``triton`` lay the documents out chunk-aligned in one
  row (padding of under one chunk per document). Otherwise, and always for ``naive``, they run as a right-padded
  batch.

Per step ``t`` and slot ``s`` (state ``h`` of shape ``[K, V]``):

    h_s <- sum of the slots that slot_map sends to s                         (merge / shift)
    Mamba-2:        h_s <- exp(log_decay_t) * h_s
    Gated DeltaNet: h_s <- exp(log_decay_t) * (h_s - beta_t * k_t (k_t^T h_s))
    h_0 <- h_0 + beta_t * k_t v_t^T                                          (write into the newest slot)
    o_t  = sum_s lam_t[s] * h_s^T q_t

The sum of the slots is exactly the single-state backbone state, so ``lam == 1`` gives the backbone.
"""

from __future__ import annotations

from ..ops_dispatch import get_multistate_op
from .chunk import chunk_gated_delta_rule, chunk_mamba2
from .naive import naive_gated_delta_rule, naive_mamba2

__all__ = ["chunk_gated_delta_rule", "chunk_mamba2", "get_multistate_op", "naive_gated_delta_rule", "naive_mamba2"]
