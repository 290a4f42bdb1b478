"""The dla memory plan's sequential drift / merge scan as one Triton program per sequence.

`TritonDynamicPlan` is a drop-in `hf_dla.memory_plans.DynamicPlan` (same decisions, same `PlanOutput` and
`PlanState`) whose loop over the tokens runs inside a kernel instead of issuing a few dozen small PyTorch
ops per token, which on a GPU costs milliseconds per thousand tokens in launches alone.

The per-slot scalars (token count, information, start) are kept in registers in recency order, exactly as
the PyTorch plan computes them. The slot summaries live in global memory as physical buffers addressed
through a recency -> buffer table, so a token costs O(D) memory traffic instead of O(S * D): opening a slot
re-uses the freed buffer (the empty last one, or the older half of the merged pair) for the new slot, and
only a merge or the newest slot's running mean touches summary data. The PyTorch plan re-divides every
summary by its count at every step; here untouched summaries are not re-rounded, so summaries agree to
float rounding (about 1e-7) and a decision could only differ for a drift within that distance of
`merge_threshold`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ... import memory_plans
from ...memory_plans import DynamicPlan, PlanOutput, PlanState
from ...ops_utils import check_cu_seqlens
from .chunk import SEQUENTIAL, check_device, launch_device

SUMMARY_BLOCK = 256  # summary columns per pass
NO_START = tl.constexpr(memory_plans.NO_START)  # kernels only read constexpr globals


@triton.jit
def _summary_cosine(kappa_ptr, summary_ptr, D, BD: tl.constexpr):
    """cos(kappa, summary) as torch.nn.functional.cosine_similarity(eps=1e-8) computes it, accumulated in float64
    (the summaries' dtype; a float32 start would change type in the loop, which the compiler rejects and the
    interpreter accepts), returned as float32."""
    dot = tl.cast(0.0, tl.float64)
    kappa_sq = tl.cast(0.0, tl.float64)
    summary_sq = tl.cast(0.0, tl.float64)
    for start in range(0, D, BD):
        cols = start + tl.arange(0, BD)
        key = tl.load(kappa_ptr + cols, mask=cols < D, other=0.0)
        summary = tl.load(summary_ptr + cols, mask=cols < D, other=0.0)
        dot += tl.sum(key * summary, 0)
        kappa_sq += tl.sum(key * key, 0)
        summary_sq += tl.sum(summary * summary, 0)
    return (dot / (tl.maximum(tl.sqrt(kappa_sq), 1e-8) * tl.maximum(tl.sqrt(summary_sq), 1e-8))).to(tl.float32)


@triton.jit
def _pick(vector, rs, index):
    """vector[index] for a register vector (index a scalar tensor)."""
    return tl.sum(tl.where(rs == index, vector, 0), 0)


@triton.jit
def dla_plan_kernel(
    kappa_ptr, valid_ptr, seen_ptr, count_ptr, tokens_ptr, information_ptr, start_ptr, summary_ptr, buffer_ptr,
    map_ptr, drift_ptr, opened_ptr, merged_ptr, bounds_ptr,
    D, S, threshold,
    BS: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """One program per sequence: program b scans the flattened steps bounds[b]:bounds[b + 1] (a batch row, or a
    document packed into a row) with row b of the plan state. State tensors are read and overwritten in place
    (recency order), except the summaries: `summary_ptr` (N, S, D) holds the physical buffers and `buffer_ptr`
    (N, S) the table."""
    b = tl.program_id(0).to(tl.int64)
    first, end = tl.load(bounds_ptr + b), tl.load(bounds_ptr + b + 1)  # this sequence's steps in the flat buffers
    rs = tl.arange(0, BS)
    live = rs < S
    seen = tl.load(seen_ptr + b)
    count = tl.load(count_ptr + b)
    tokens = tl.load(tokens_ptr + b * S + rs, mask=live, other=0.0)
    information = tl.load(information_ptr + b * S + rs, mask=live, other=0.0)
    start = tl.load(start_ptr + b * S + rs, mask=live, other=NO_START)
    buffer = rs  # physical summary buffer of every recency rank
    summaries = summary_ptr + b * S * D
    pair = (rs[:, None] == rs[None, :] + 1) | (rs[:, None] == rs[None, :])  # rows s, s + 1 of pair s
    for t in range(first, end):
        real = tl.load(valid_ptr + t) != 0
        key_ptr = kappa_ptr + t * D
        empty = count == 0
        cosine = _summary_cosine(key_ptr, summaries + _pick(buffer, rs, 0) * D, D, BD)
        drift = tl.where(empty, 1.0, 1.0 - cosine)
        opens = real & (empty | (drift > threshold))
        merges = opens & (count == S)
        pair_tokens = tl.sum(tl.where(pair, tokens[:, None], 0.0), 0)
        density = tl.sum(tl.where(pair, information[:, None], 0.0), 0) / tl.maximum(pair_tokens, 1e-12)
        density = tl.where(rs < S - 1, density, float("inf"))
        lowest_pair = tl.max(tl.where(density == tl.min(density, 0), rs, -1), 0)  # ties: the oldest pair
        merge_rank = tl.where(merges, lowest_pair, S)
        step_map = tl.minimum(rs - (rs > merge_rank).to(tl.int32) + opens.to(tl.int32), S - 1)
        moves = (step_map[:, None] == rs[None, :]) & live[:, None]  # (old rank, new rank)
        newer_tokens, older_tokens = _pick(tokens, rs, lowest_pair), _pick(tokens, rs, lowest_pair + 1)
        tokens = tl.sum(tl.where(moves, tokens[:, None], 0.0), 0)
        information = tl.sum(tl.where(moves, information[:, None], 0.0), 0)
        start = tl.min(tl.where(moves, start[:, None], NO_START), 0)
        start = tl.where((rs == 0) & opens, seen, start)
        tokens += tl.where((rs == 0) & real, 1.0, 0.0)
        information += tl.where((rs == 0) & real, drift, 0.0)
        if opens:
            if merges:  # the older buffer of the pair takes the count-weighted mean; the newer one is freed
                older = summaries + _pick(buffer, rs, lowest_pair + 1) * D
                newer = summaries + _pick(buffer, rs, lowest_pair) * D
                for col in range(0, D, BD):
                    cols = col + tl.arange(0, BD)
                    mix = newer_tokens * tl.load(newer + cols, mask=cols < D, other=0.0)
                    mix += older_tokens * tl.load(older + cols, mask=cols < D, other=0.0)
                    tl.store(older + cols, mix / tl.maximum(newer_tokens + older_tokens, 1.0), mask=cols < D)
                freed = lowest_pair
            else:
                freed = S - 1
            shifted = tl.sum(tl.where(rs[:, None] + 1 == rs[None, :], buffer[:, None], 0), 0)  # buffer[s - 1]
            buffer = tl.where(rs == 0, _pick(buffer, rs, freed), tl.where(rs <= freed, shifted, buffer))
        tl.debug_barrier()
        if real:  # the token joins slot 0: a running mean (a new slot starts from zero, so it becomes the key)
            newest = summaries + _pick(buffer, rs, 0) * D
            newest_tokens = tl.maximum(_pick(tokens, rs, 0), 1.0)
            for col in range(0, D, BD):
                cols = col + tl.arange(0, BD)
                key = tl.load(key_ptr + cols, mask=cols < D, other=0.0)
                summary = tl.where(opens, 0.0, tl.load(newest + cols, mask=cols < D, other=0.0))
                tl.store(newest + cols, summary + (key - summary) / newest_tokens, mask=cols < D)
        tl.debug_barrier()
        count += opens.to(count.dtype) - merges.to(count.dtype)
        seen += real.to(seen.dtype)
        tl.store(map_ptr + t * S + rs, step_map.to(tl.int64), mask=live)
        tl.store(drift_ptr + t, tl.where(real, drift, 0.0))
        tl.store(opened_ptr + t, opens.to(tl.int8))
        tl.store(merged_ptr + t, tl.where(merges, lowest_pair, -1).to(tl.int64))
    tl.store(seen_ptr + b, seen)
    tl.store(count_ptr + b, count)
    tl.store(tokens_ptr + b * S + rs, tokens, mask=live)
    tl.store(information_ptr + b * S + rs, information, mask=live)
    tl.store(start_ptr + b * S + rs, start, mask=live)
    tl.store(buffer_ptr + b * S + rs, buffer, mask=live)


class TritonDynamicPlan(DynamicPlan):
    """`DynamicPlan` with the token scan in `dla_plan_kernel` (CUDA tensors, or the CPU interpreter)."""

    @torch.no_grad()
    def __call__(self, keys, valid, state):
        batch, seq_len = keys.shape[:2]
        return self._scan(keys, valid, state, torch.arange(batch + 1, device=keys.device) * seq_len)

    @torch.no_grad()
    def plan_documents(self, keys, valid, cu_seqlens, state=None):
        # One program per packed document, scanning it in place on the packed row from its own (empty) plan state.
        cu_seqlens = check_cu_seqlens(cu_seqlens, keys.shape[1], keys.shape[0]).to(keys.device)
        if state is None:
            state = self.init_state(cu_seqlens.numel() - 1, keys.shape[-2] * keys.shape[-1], keys.device)
        return self._scan(keys, valid, state, cu_seqlens)

    def _scan(self, keys, valid, state, bounds) -> PlanOutput:
        """Scan sequence i = flattened tokens bounds[i]:bounds[i + 1] of the keys (B, T, H, K) with row i of the
        plan state; the slot map and the trace keep the keys' (B, T) layout."""
        check_device(keys.device)
        batch, seq_len, heads, key_dim = keys.shape
        kappa = F.normalize(keys.float(), dim=-1, eps=1e-6).reshape(batch, seq_len, heads * key_dim).contiguous()
        if state.summary.shape[-1] != kappa.shape[-1]:
            raise ValueError(f"plan state summary has dim {state.summary.shape[-1]}, keys give {kappa.shape[-1]}.")
        seen, count, tokens, information, summary, start = (t.clone().contiguous() for t in state.tensors())
        slots, device, sequences = self.num_slots, keys.device, bounds.numel() - 1
        buffer = torch.empty(sequences, slots, dtype=torch.int32, device=device)
        slot_map = torch.empty(batch, seq_len, slots, dtype=torch.long, device=device)
        drift = torch.empty(batch, seq_len, device=device)
        opened = torch.empty(batch, seq_len, dtype=torch.int8, device=device)
        merged = torch.empty(batch, seq_len, dtype=torch.long, device=device)
        with launch_device(device):
            dla_plan_kernel[(sequences,)](
                kappa, valid.to(torch.int8).contiguous(), seen, count, tokens, information, start, summary, buffer,
                slot_map, drift, opened, merged, bounds.long().contiguous(),
                kappa.shape[-1], slots, float(self.merge_threshold),
                BS=triton.next_power_of_2(slots), BD=min(SUMMARY_BLOCK, triton.next_power_of_2(max(kappa.shape[-1], 1))),
                num_stages=SEQUENTIAL,
            )  # fmt: skip
        summary = summary.gather(1, buffer.long()[..., None].expand_as(summary))  # back to recency order
        trace = {"drift": drift, "opened": opened.bool(), "merged": merged}
        return PlanOutput(slot_map, PlanState(seen, count, tokens, information, summary, start), trace)
