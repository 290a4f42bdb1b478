"""Memory plans: which slot each token is written to, and which slots merge, for the three memory modes.

A plan runs before the recurrence and only looks at the keys and the padding mask, so the op that follows
(`hf_dla.ops`) receives a finished ``slot_map`` (B, T, S): the slot index that each slot of step ``t - 1``
takes at step ``t`` (see `hf_dla/ops/__init__.py`). Slot indices are the lambda indices:

- ``vanilla``: one slot, no map.
- ``loglinear``: Fenwick levels (Log-Linear Attention). For the token at position ``p`` (counted over real
  tokens), the levels ``0 .. ctz(p)`` merge into level ``ctz(p) + 1`` and the token opens level 0; level
  ``l >= 1`` then holds ``2 ** (l - 1)`` tokens of the binary decomposition of ``p``.
- ``dla``: dynamic and bounded, one segmentation per (sequence, layer) shared by the heads. Slots are kept
  by recency rank (0 = newest) with their token count ``n``, information ``u`` and summary key ``c`` (mean
  of the head-concatenated L2-normalised keys). Drift ``d = 1 - cos(kappa_t, c_newest)`` (1 for the first
  token); ``d > merge_threshold`` opens a slot, first merging, when ``max_states`` slots are live, the
  adjacent pair with the lowest density ``(u_s + u_{s+1}) / (n_s + n_{s+1})`` (ties: the oldest pair);
  otherwise the token joins the newest slot. Then ``u_newest += d``.

Padding tokens (``valid == False``) change nothing: identity map, no count, no drift. Decisions depend only
on the past, so planning a whole sequence at once or token by token (decoding) gives the same maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .ops_utils import (
    batch_to_documents,
    check_cu_seqlens,
    documents_to_batch,
    import_triton_backend,
)

NO_START = 2**62  # start position of an empty slot


@dataclass
class PlanState:
    """What a plan carries from one forward to the next (kept per layer in `DLACache`); fixed size."""

    seen: torch.Tensor  # (B,) real tokens consumed so far
    count: torch.Tensor  # (B,) live slots (dla)
    tokens: torch.Tensor  # (B, S) token count n per slot (dla)
    information: torch.Tensor  # (B, S) information u per slot (dla)
    summary: torch.Tensor  # (B, S, D) mean normalised key c per slot (dla)
    start: torch.Tensor  # (B, S) position of the first token of each slot (dla)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def index_select(self, indices: torch.Tensor) -> PlanState:
        """Select / reorder sequences (beam search, batch selection)."""
        return PlanState(*(t.index_select(0, indices.to(t.device)) for t in self.tensors()))


class PlanOutput(NamedTuple):
    slot_map: torch.Tensor | None  # (B, T, S) int64, None for a single slot
    state: PlanState
    trace: dict[str, torch.Tensor] | None  # dla only: per-token drift, opened, merged rank (-1: none)


class MemoryPlan:
    """Base: `num_slots` slots; `init_state` + `__call__(keys, valid, state)` -> `PlanOutput`."""

    num_slots: int = 1
    keeps_summary: bool = False  # only dla compares keys with slot summaries

    def init_state(self, batch_size: int, key_dim: int, device: torch.device) -> PlanState:
        slots = self.num_slots
        summary_dim = key_dim if self.keeps_summary else 0
        return PlanState(
            seen=torch.zeros(batch_size, dtype=torch.long, device=device),
            count=torch.zeros(batch_size, dtype=torch.long, device=device),
            tokens=torch.zeros(batch_size, slots, device=device),
            information=torch.zeros(batch_size, slots, device=device),
            summary=torch.zeros(batch_size, slots, summary_dim, dtype=torch.float64, device=device),
            start=torch.full((batch_size, slots), NO_START, dtype=torch.long, device=device),
        )

    def __call__(self, keys: torch.Tensor, valid: torch.Tensor, state: PlanState) -> PlanOutput:
        raise NotImplementedError

    def plan_documents(
        self, keys: torch.Tensor, valid: torch.Tensor, cu_seqlens: torch.Tensor, state: PlanState | None = None
    ) -> PlanOutput:
        """Plan documents packed into one row (keys (1, T, H, K), fla-style `cu_seqlens`), each from empty slots:
        loglinear's positions count from the document start, dla's slots are emptied at a document start.

        `state` (one row per document, default: fresh) and the returned state hold one row per document; the
        slot map and the trace come back packed, (1, T, ...)."""
        cu_seqlens = check_cu_seqlens(cu_seqlens, keys.shape[1], keys.shape[0])
        num_docs = cu_seqlens.numel() - 1
        if state is None:
            state = self.init_state(num_docs, keys.shape[-2] * keys.shape[-1], keys.device)
        # Plans that do not compare keys (vanilla, loglinear) get empty ones: no padded copy of the keys.
        keys = documents_to_batch(keys if self.keeps_summary else keys[..., :0, :0], cu_seqlens)
        planned = self(keys, documents_to_batch(valid, cu_seqlens, False), state)
        slot_map = None if planned.slot_map is None else batch_to_documents(planned.slot_map, cu_seqlens)
        trace = planned.trace and {name: batch_to_documents(x, cu_seqlens) for name, x in planned.trace.items()}
        return PlanOutput(slot_map, planned.state, trace)


def _advance_seen(state: PlanState, valid: torch.Tensor) -> PlanState:
    return PlanState(state.seen + valid.long().sum(1), *state.tensors()[1:])


class VanillaPlan(MemoryPlan):
    """The backbone: one slot that every token writes to."""

    def __call__(self, keys, valid, state):
        return PlanOutput(None, _advance_seen(state, valid), None)


class LogLinearPlan(MemoryPlan):
    """Fenwick levels of Log-Linear Attention: ``num_levels`` levels hold ``2 ** (num_levels - 1)`` tokens."""

    def __init__(self, num_levels: int):
        self.num_slots = num_levels

    @property
    def max_tokens(self) -> int:
        return 2 ** (self.num_slots - 1)

    def __call__(self, keys, valid, state):
        valid_long = valid.long()
        position = state.seen[:, None] + valid_long.cumsum(1) - valid_long  # among real tokens
        longest = int(state.seen.max()) + int(valid_long.sum(1).max()) if valid.numel() else 0
        if longest > self.max_tokens:
            raise ValueError(
                f"memory='loglinear' with max_states={self.num_slots} levels holds at most {self.max_tokens} tokens, "
                f"but this sequence reaches {longest}. Raise max_states to at least "
                f"{math.ceil(math.log2(longest)) + 1} (ceil(log2 T) + 1)."
            )
        lowest_bit = position & -position
        carry_level = torch.log2(lowest_bit.clamp_min(1).float()).round().long()  # ctz(position)
        levels = torch.arange(self.num_slots, device=keys.device)
        merges = (valid & (position > 0))[..., None] & (levels <= carry_level[..., None])
        slot_map = torch.where(merges, carry_level[..., None] + 1, levels)
        return PlanOutput(slot_map, _advance_seen(state, valid), None)


class DynamicPlan(MemoryPlan):
    """DLA: information-aware opening of slots, lowest-density adjacent merge under ``max_states``.

    The scan is sequential and cheap: per token one dot product with the newest slot's key sum and a few list
    operations on at most ``max_states`` slots, in float64 on the CPU (no gradient flows through decisions).
    """

    keeps_summary = True

    def __init__(self, max_states: int, merge_threshold: float):
        self.num_slots = max_states
        self.merge_threshold = merge_threshold
        slots = np.arange(max_states)
        # Row 0: nothing moves; row 1: a slot opens (every slot ages by one); row 2 + r: a slot opens after
        # merging the pair (r, r + 1). The last slot is empty whenever row 1 applies, so clamping is harmless.
        self._step_maps = np.stack(
            [slots, np.minimum(slots + 1, max_states - 1)]
            + [np.where(slots <= r, slots + 1, slots) for r in range(max_states - 1)]
        )

    @torch.no_grad()
    def __call__(self, keys, valid, state):
        batch, seq_len = keys.shape[:2]
        return self._scan(keys, valid, state, [(b, 0, seq_len) for b in range(batch)])

    @torch.no_grad()
    def plan_documents(self, keys, valid, cu_seqlens, state=None):
        # Scanned in place on the packed row, document after document, each from its own (empty) plan state.
        bounds = check_cu_seqlens(cu_seqlens, keys.shape[1], keys.shape[0]).tolist()
        if state is None:
            state = self.init_state(len(bounds) - 1, keys.shape[-2] * keys.shape[-1], keys.device)
        return self._scan(keys, valid, state, [(0, start, end) for start, end in zip(bounds, bounds[1:])])

    def _scan(self, keys, valid, state, spans) -> PlanOutput:
        """Scan the token spans `(row, start, end)` of the keys, span i with row i of the plan state."""
        batch, seq_len, heads, key_dim = keys.shape
        # One segmentation shared by the heads: concatenate the per-head unit keys.
        kappa = F.normalize(keys.float(), dim=-1, eps=1e-6).reshape(batch, seq_len, heads * key_dim)
        kappa = kappa.double().cpu().numpy()
        if state.summary.shape[-1] != kappa.shape[-1]:
            raise ValueError(f"plan state summary has dim {state.summary.shape[-1]}, keys give {kappa.shape[-1]}.")
        valid_rows = valid.cpu().numpy()
        step_codes = np.zeros((batch, seq_len), dtype=np.int64)
        drift = np.zeros((batch, seq_len))
        merged = np.full((batch, seq_len), -1, dtype=np.int64)
        rows = [
            self._scan_sequence(
                kappa[r, a:b], valid_rows[r, a:b], state, i, step_codes[r, a:b], drift[r, a:b], merged[r, a:b]
            )
            for i, (r, a, b) in enumerate(spans)
        ]
        device = keys.device
        slots = self.num_slots

        def stacked(values, fill, dtype):
            padded = [list(v) + [fill] * (slots - len(v)) for v in values]
            return torch.tensor(padded, dtype=dtype, device=device)

        summaries = torch.zeros(len(rows), slots, kappa.shape[-1], dtype=torch.float64, device=device)
        for b, row in enumerate(rows):
            if row["tokens"]:
                sums = torch.from_numpy(np.stack(row["sums"])).to(device)
                summaries[b, : len(row["tokens"])] = sums / torch.tensor(row["tokens"], device=device)[:, None]
        new_state = PlanState(
            seen=torch.tensor([row["seen"] for row in rows], dtype=torch.long, device=device),
            count=torch.tensor([len(row["tokens"]) for row in rows], dtype=torch.long, device=device),
            tokens=stacked([row["tokens"] for row in rows], 0.0, torch.float32),
            information=stacked([row["information"] for row in rows], 0.0, torch.float32),
            summary=summaries,
            start=stacked([row["start"] for row in rows], NO_START, torch.long),
        )
        slot_map = torch.from_numpy(self._step_maps[step_codes]).to(device)
        trace = {
            "drift": torch.from_numpy(drift).float().to(device),
            "opened": torch.from_numpy(step_codes > 0).to(device),
            "merged": torch.from_numpy(merged).to(device),
        }
        return PlanOutput(slot_map, new_state, trace)

    def _scan_sequence(self, kappa, valid, state, b, step_codes, drift_out, merged_out) -> dict:
        """Scan one sequence; slot lists are newest first. Writes the per-token outputs in place."""
        live = int(state.count[b])
        tokens = state.tokens[b, :live].tolist()
        information = state.information[b, :live].tolist()
        sums = list((state.summary[b, :live].double() * state.tokens[b, :live, None].double()).cpu().numpy())
        start = state.start[b, :live].tolist()
        seen = int(state.seen[b])
        key_norms = np.einsum("td,td->t", kappa, kappa).tolist()
        newest_norm = float(sums[0] @ sums[0]) if sums else 0.0  # |key sum of the newest slot|^2, kept current
        for t in np.flatnonzero(valid).tolist():
            key = kappa[t]
            overlap = float(key @ sums[0]) if tokens else 0.0
            if tokens:
                token_drift = 1.0 - overlap / max(math.sqrt(key_norms[t] * newest_norm), 1e-12)
            else:
                token_drift = 1.0  # the first token always opens a slot
            if not tokens or token_drift > self.merge_threshold:
                step_codes[t] = 1
                if len(tokens) == self.num_slots:
                    pair, lowest = 0, math.inf
                    for r in range(len(tokens) - 2, -1, -1):  # from the oldest pair: ties keep the oldest
                        density = (information[r] + information[r + 1]) / (tokens[r] + tokens[r + 1])
                        if density < lowest:
                            pair, lowest = r, density
                    tokens[pair] += tokens.pop(pair + 1)
                    information[pair] += information.pop(pair + 1)
                    sums[pair] = sums[pair] + sums.pop(pair + 1)
                    start[pair] = start.pop(pair + 1)  # the older slot's start
                    step_codes[t], merged_out[t] = 2 + pair, pair
                tokens.insert(0, 0.0)
                information.insert(0, 0.0)
                sums.insert(0, np.zeros_like(key))
                start.insert(0, seen)
                overlap, newest_norm = 0.0, 0.0
            tokens[0] += 1.0
            np.add(sums[0], key, out=sums[0])
            newest_norm += 2.0 * overlap + key_norms[t]
            information[0] += token_drift
            drift_out[t] = token_drift
            seen += 1
        return {"tokens": tokens, "information": information, "sums": sums, "start": start, "seen": seen}


def _dynamic_plan(max_states: int, merge_threshold: float, backend: str) -> MemoryPlan:
    # With the Triton backend: `hf_dla.ops.triton.TritonDynamicPlan`, the same decisions, its token scan in one Triton
    # program per sequence. Every other plan is PyTorch for every backend.
    if backend == "triton":
        return import_triton_backend().TritonDynamicPlan(max_states, merge_threshold)
    return DynamicPlan(max_states, merge_threshold)


# The memory modes by name (`DLAConfig.memory`), each with the builder of its plan from
# (max_states, merge_threshold, backend). A new mode: its `MemoryPlan` subclass, one entry here, its docs.
MEMORY_PLANS: dict[str, Callable[[int, float, str], MemoryPlan]] = {
    "vanilla": lambda max_states, merge_threshold, backend: VanillaPlan(),
    "loglinear": lambda max_states, merge_threshold, backend: LogLinearPlan(max_states),
    "dla": _dynamic_plan,
}


def build_memory_plan(memory: str, max_states: int, merge_threshold: float, backend: str = "chunk") -> MemoryPlan:
    """The plan of a memory mode (a key of `MEMORY_PLANS`: ``vanilla`` | ``loglinear`` | ``dla``) for the op
    backend that follows it."""
    if memory not in MEMORY_PLANS:
        raise ValueError(f"memory={memory!r} is unknown; choose one of {tuple(MEMORY_PLANS)}.")
    return MEMORY_PLANS[memory](max_states, merge_threshold, backend)
