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
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F

MEMORY_MODES = ("vanilla", "loglinear", "dla")
_NO_START = 2**62  # start position of an empty slot


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
            summary=torch.zeros(batch_size, slots, summary_dim, device=device),
            start=torch.full((batch_size, slots), _NO_START, dtype=torch.long, device=device),
        )

    def __call__(self, keys: torch.Tensor, valid: torch.Tensor, state: PlanState) -> PlanOutput:
        raise NotImplementedError


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
    """DLA: information-aware opening of slots, lowest-density adjacent merge under ``max_states``."""

    keeps_summary = True

    def __init__(self, max_states: int, merge_threshold: float):
        self.num_slots = max_states
        self.merge_threshold = merge_threshold

    @torch.no_grad()
    def __call__(self, keys, valid, state):
        batch, seq_len, heads, key_dim = keys.shape
        # One segmentation shared by the heads: concatenate the per-head unit keys.
        kappa = F.normalize(keys.float(), dim=-1, eps=1e-6).reshape(batch, seq_len, heads * key_dim)
        seen, count, tokens, information, summary, start = (t.clone() for t in state.tensors())
        if summary.shape[-1] != kappa.shape[-1]:
            raise ValueError(f"plan state summary has dim {summary.shape[-1]}, keys give {kappa.shape[-1]}.")
        slots = self.num_slots
        ranks = torch.arange(slots, device=keys.device)
        maps, drifts, opened, merged = [], [], [], []
        for t in range(seq_len):
            real, key = valid[:, t], kappa[:, t]
            empty = count == 0
            drift = torch.where(empty, 1.0, 1.0 - F.cosine_similarity(key, summary[:, 0], dim=-1, eps=1e-8))
            opens = real & (empty | (drift > self.merge_threshold))
            merges = opens & (count == slots)
            pair_density = (information[:, :-1] + information[:, 1:]) / (tokens[:, :-1] + tokens[:, 1:]).clamp_min(
                1e-12
            )
            # argmin returns the first minimum: flip so that ties go to the oldest pair (highest rank).
            lowest_pair = slots - 2 - pair_density.flip(-1).argmin(-1)
            merge_rank = torch.where(merges, lowest_pair, slots)
            step_map = ranks - (ranks > merge_rank[:, None]).long() + opens[:, None].long()
            step_map = step_map.clamp_max(slots - 1)  # only an empty slot is clamped
            move = F.one_hot(step_map, slots).float()  # (B, S_old, S_new)
            weighted_summary = torch.einsum("bsn,bs,bsd->bnd", move, tokens, summary)
            tokens = torch.einsum("bsn,bs->bn", move, tokens)
            information = torch.einsum("bsn,bs->bn", move, information)
            summary = weighted_summary / tokens.clamp_min(1.0)[..., None]
            start = torch.full_like(start, _NO_START).scatter_reduce(1, step_map, start, "amin")
            start[:, 0] = torch.where(opens, seen, start[:, 0])
            # The token joins slot 0 (new or newest).
            weight = real.float()
            tokens[:, 0] += weight
            summary[:, 0] += weight[:, None] * (key - summary[:, 0]) / tokens[:, 0].clamp_min(1.0)[:, None]
            information[:, 0] += weight * drift
            count = count + opens.long() - merges.long()
            seen = seen + real.long()
            maps.append(step_map)
            drifts.append(torch.where(real, drift, 0.0))
            opened.append(opens)
            merged.append(torch.where(merges, lowest_pair, -1))
        new_state = PlanState(seen, count, tokens, information, summary, start)
        trace = {"drift": torch.stack(drifts, 1), "opened": torch.stack(opened, 1), "merged": torch.stack(merged, 1)}
        return PlanOutput(torch.stack(maps, 1), new_state, trace)


def build_memory_plan(memory: str, max_states: int, merge_threshold: float) -> MemoryPlan:
    """The plan of a memory mode (``vanilla`` | ``loglinear`` | ``dla``)."""
    if memory == "vanilla":
        return VanillaPlan()
    if memory == "loglinear":
        return LogLinearPlan(max_states)
    if memory == "dla":
        return DynamicPlan(max_states, merge_threshold)
    raise ValueError(f"memory={memory!r} is unknown; choose one of {MEMORY_MODES}.")
