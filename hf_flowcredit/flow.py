"""Attention flow throughput: how much source-to-sink attention flow passes through each token.

Definition. For one sequence with aggregated attention `attn[j, i]` (query j, key i):

- `A[j, i] = attn[j, i]` for `i < j`, else 0: self and future edges are dropped. Padding tokens have no edges.
- With `renormalize` (default) each row of `A` is divided by its sum; rows summing to zero stay zero.
- Sources `Q` (prompt tokens) get no incoming edges (`A[q, :] = 0`), sinks `R` (answer tokens) no outgoing edges
  (`A[:, r] = 0`).
- Forward flow `F = (I - A)^-1 1_Q`, backward reach `G = (I - A^T)^-1 1_R`, throughput `F * G`: the summed weight
  of every source-to-sink path through the token, a path weighing the product of its edges.

Two implementations with the same signature, in the style of fla's naive/chunk ops:

- `flow_throughput_dense` builds the `T x T` edge matrix and does two triangular solves: the readable reference.
- `flow_throughput_blockwise` walks query-row blocks (forward substitution for `F`, backward for `G`) and never holds
  more than a `block x T` slab; it also accepts the attention lazily, as a callable producing query-row blocks, so
  a 16k-token sequence needs no 1 GiB attention matrix at all.

`flow_throughput` picks the dense one for short sequences and the blockwise one otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["AttentionRows", "flow_throughput", "flow_throughput_blockwise", "flow_throughput_dense"]

# (start, end) -> attention rows of the queries start..end-1, shape [B, end - start, T] (at least `end` columns).
AttentionRows = Callable[[int, int], torch.Tensor]

# Above this many edge-matrix elements (B * T * T) `flow_throughput` switches to the blockwise implementation.
DENSE_MAX_ELEMENTS = 2**24
# Elements per slab (B * block * T) that the blockwise implementation aims for when `block_size` is not given.
SLAB_ELEMENTS = 2**24


def _validate_masks(
    source_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shape: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """Check the masks and return the boolean validity mask (True = real token)."""
    for name, mask in (("source_mask", source_mask), ("sink_mask", sink_mask), ("attention_mask", attention_mask)):
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(mask.shape)} but the attention implies [B, T] = {list(shape)}.")
    for name, mask in (("source_mask", source_mask), ("sink_mask", sink_mask)):
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}; pass `mask.bool()`.")
    valid = torch.ones(shape, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    if (source_mask & sink_mask).any():
        raise ValueError(
            "source_mask and sink_mask overlap: a token cannot be both a source (prompt) and a sink (answer)."
        )
    for name, mask in (("source_mask", source_mask), ("sink_mask", sink_mask)):
        if (mask & ~valid).any():
            raise ValueError(f"{name} marks padding positions (attention_mask == 0); sources and sinks must be real.")
    return valid


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"attention must be float32 or float64, got {dtype}; convert it with `.float()` first.")
    return dtype


def _check_values(attn_rows: torch.Tensor, start: int) -> None:
    low, high = torch.aminmax(attn_rows)  # NaN propagates into both, so one check catches NaN, inf and negatives
    if not (low >= 0 and high < math.inf):
        raise ValueError(
            f"attention rows {start}..{start + attn_rows.shape[1] - 1} contain NaN, inf or negative values; "
            "attention must be finite probabilities (check the model's dtype, e.g. fp16 overflow)."
        )


def _edges(
    attn: torch.Tensor, source_mask: torch.Tensor, sink_mask: torch.Tensor, valid: torch.Tensor, renormalize: bool
) -> torch.Tensor:
    """The edge matrix `A` [B, T, T], exactly as the module docstring defines it."""
    _check_values(attn, 0)
    keep = torch.ones(attn.shape[-2:], dtype=torch.bool, device=attn.device).tril(-1)[None]  # key before query
    keep = keep & valid[:, None, :] & valid[:, :, None]  # padding has no edges
    edges = torch.where(keep, attn, attn.new_zeros(()))  # a fresh tensor: the rest works in place
    if renormalize:
        row_sums = edges.sum(-1, keepdim=True)
        edges.div_(torch.where(row_sums > 0, row_sums, torch.ones_like(row_sums)))
    edges.masked_fill_(source_mask[:, :, None], 0.0)  # nothing flows into a source
    return edges.masked_fill_(sink_mask[:, None, :], 0.0)  # nothing flows out of a sink


def _solve_unit_lower(edges: torch.Tensor, rhs: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """x with (I - E) x = rhs (or (I - E^T) x = rhs) for a strictly lower-triangular E, batched over dim 0."""
    matrix = -edges.transpose(-1, -2) if transpose else -edges
    solution = torch.linalg.solve_triangular(matrix, rhs.unsqueeze(-1), upper=transpose, unitriangular=True)
    return solution.squeeze(-1)


def _empty_rows(source_mask: torch.Tensor, sink_mask: torch.Tensor) -> torch.Tensor:
    """Rows with no source or no sink carry no flow: their throughput is defined as all zero."""
    return ~(source_mask.any(-1) & sink_mask.any(-1))


def flow_throughput_dense(
    attn: torch.Tensor,
    source_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    renormalize: bool = True,
) -> torch.Tensor:
    """Reference implementation of `flow_throughput`: materialises the `[B, T, T]` edge matrix. See `flow_throughput`."""
    if not isinstance(attn, torch.Tensor) or attn.dim() != 3 or attn.shape[1] != attn.shape[2] or attn.shape[1] == 0:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(f"attn must be a [B, T, T] tensor, got shape {shape}.")
    _float_dtype(attn.dtype)
    valid = _validate_masks(source_mask, sink_mask, attention_mask, tuple(attn.shape[:2]), attn.device)
    edges = _edges(attn, source_mask, sink_mask, valid, renormalize)
    forward = _solve_unit_lower(edges, source_mask.to(attn.dtype))
    backward = _solve_unit_lower(edges, sink_mask.to(attn.dtype), transpose=True)
    return (forward * backward).masked_fill(_empty_rows(source_mask, sink_mask)[:, None], 0.0)


def _as_row_source(attn: torch.Tensor | AttentionRows, shape: tuple[int, int]) -> AttentionRows:
    if isinstance(attn, torch.Tensor):
        if attn.dim() != 3 or tuple(attn.shape) != (*shape, shape[1]):
            raise ValueError(
                f"attn must be a [B, T, T] tensor matching the masks {list(shape)}, got shape {tuple(attn.shape)}."
            )
        return lambda start, end: attn[:, start:end]
    if not callable(attn):
        raise TypeError(
            f"attn must be a [B, T, T] tensor or a callable (start, end) -> rows, got {type(attn).__name__}."
        )
    return attn


def _checked_rows(rows: AttentionRows, start: int, end: int, batch: int, dtype: torch.dtype | None) -> torch.Tensor:
    block = rows(start, end)
    if not isinstance(block, torch.Tensor) or block.dim() != 3 or tuple(block.shape[:2]) != (batch, end - start):
        shape = tuple(block.shape) if isinstance(block, torch.Tensor) else type(block).__name__
        raise ValueError(
            f"attention rows {start}..{end - 1} must have shape [{batch}, {end - start}, T], got {shape}."
        )
    if block.shape[-1] < end:
        raise ValueError(
            f"attention rows {start}..{end - 1} have only {block.shape[-1]} columns, need at least {end}."
        )
    if dtype is not None and block.dtype != dtype:
        raise TypeError(f"attention rows {start}..{end - 1} are {block.dtype} but earlier rows were {dtype}.")
    return block


def _first_row_needing_forward(
    source_mask: torch.Tensor, sink_mask: torch.Tensor, valid: torch.Tensor, empty_row: torch.Tensor
) -> int:
    """With renormalisation, the first row from which `F` must be solved for; `F = 1` on every real token before it.

    Before a sequence's first sink every real row outside the sources sums to 1 over earlier real tokens, so by
    induction from the sources (`F = 1`) each of those rows averages `F = 1` values: `F = 1`. The induction breaks at
    the first sink (its column is dropped from later rows) and at a real non-source row without any edge (its
    `F` is 0, e.g. a sequence that does not start with a source). Rows that score 0 anyway (no source or no sink)
    are left out; padding is 0 in `F` either way.
    """
    breaks = (sink_mask | (valid & ~source_mask & empty_row)) & ~_empty_rows(source_mask, sink_mask)[:, None]
    positions = breaks.any(0).nonzero()
    return int(positions[0]) if len(positions) else source_mask.shape[1]


def flow_throughput_blockwise(
    attn: torch.Tensor | AttentionRows,
    source_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    renormalize: bool = True,
    block_size: int | None = None,
) -> torch.Tensor:
    """Bounded-memory implementation of `flow_throughput`: never holds more than a `[B, block_size, T]` slab.

    `attn` may be a `[B, T, T]` tensor or a callable `rows(start, end)` returning the attention of queries
    `start..end-1` as `[B, end - start, T]`. Every row is read once for the backward reach `G` (last block first);
    the forward flow `F` then needs the rows again only from the first sink on when `renormalize` (before it
    `F = 1` exactly, see `_first_row_needing_forward`), every row without it: about one pass over the rows instead
    of two. `block_size` defaults to about 16M slab elements (64 MiB in float32), clamped to 32..1024 rows.
    """
    if source_mask.dim() != 2 or source_mask.shape[1] == 0:
        raise ValueError(f"source_mask must be [B, T] with T > 0, got shape {tuple(source_mask.shape)}.")
    batch, length = source_mask.shape
    rows = _as_row_source(attn, (batch, length))
    valid = _validate_masks(source_mask, sink_mask, attention_mask, (batch, length), source_mask.device)
    if block_size is None:
        block_size = max(32, min(1024, SLAB_ELEMENTS // max(1, batch * length)))
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    starts = list(range(0, length, block_size))
    last_rows = _checked_rows(rows, starts[-1], length, batch, None)  # fetched first, to learn the dtype
    dtype, device = _float_dtype(last_rows.dtype), last_rows.device

    def vector(mask: torch.Tensor) -> torch.Tensor:
        return mask.to(dtype=dtype, device=device)

    # A = diag(row_scale) . strict_tril(attn) . diag(flows_out): every mask and the renormalisation act on
    # vectors, so a slab is only ever read (by one matrix product), never copied; only the diagonal block is built.
    real, flows_out = vector(valid), vector(valid & ~sink_mask)
    row_scale = torch.zeros_like(real)  # filled block by block in the backward pass, reused in the forward pass
    empty_row = torch.zeros_like(valid)  # real rows without any edge to an earlier real token

    def diagonal_block(strict_lower: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return row_scale[:, start:end, None] * strict_lower * flows_out[:, None, start:end]

    # Backward substitution with a running accumulator of what later rows send back, so row slabs are all it needs:
    # G[J] = 1_R[J] + A[J, J]^T G[J] + sum over later rows j of A[j, J]^T G[j]. Each block's row sums (hence its
    # row scale) come from the same slab, before its rows are used.
    backward, from_later = torch.zeros_like(real), torch.zeros_like(real)
    for start in reversed(starts):
        end = min(length, start + block_size)
        block_rows = last_rows if end == length else _checked_rows(rows, start, end, batch, dtype)
        last_rows = None  # one slab at a time
        _check_values(block_rows, start)  # all of the rows as given: a column slice would cost a copy
        past = block_rows[..., :start]
        strict_lower = block_rows[..., start:end].tril(-1)
        row_sums = (past @ real[:, :start, None])[..., 0] + (strict_lower @ real[:, start:end, None])[..., 0]
        empty_row[:, start:end] = row_sums <= 0
        scale = torch.where(row_sums > 0, 1.0 / row_sums, 1.0) if renormalize else torch.ones_like(row_sums)
        row_scale[:, start:end] = scale * real[:, start:end] * vector(~source_mask[:, start:end])
        rhs = vector(sink_mask[:, start:end]) + flows_out[:, start:end] * from_later[:, start:end]
        backward[:, start:end] = _solve_unit_lower(diagonal_block(strict_lower, start, end), rhs, transpose=True)
        sent_back = (row_scale[:, start:end] * backward[:, start:end])[:, None, :] @ past
        from_later[:, :start] += sent_back[:, 0]
    del block_rows, past, strict_lower

    # Forward substitution from the first row whose F is not known to be 1:
    # F[J] = 1_Q[J] + A[J, :start] F[:start] + A[J, J] F[J], block by block.
    first = _first_row_needing_forward(source_mask, sink_mask, valid, empty_row) if renormalize else 0
    forward = real.clone()  # F = 1 on the real tokens before `first`, 0 on padding
    for start in range(first, length, block_size):
        end = min(length, start + block_size)
        block_rows = _checked_rows(rows, start, end, batch, dtype)
        from_past = block_rows[..., :start] @ (flows_out * forward)[:, :start, None]
        rhs = vector(source_mask[:, start:end]) + row_scale[:, start:end] * from_past[..., 0]
        strict_lower = block_rows[..., start:end].tril(-1)
        forward[:, start:end] = _solve_unit_lower(diagonal_block(strict_lower, start, end), rhs)

    return (forward * backward).masked_fill(_empty_rows(source_mask, sink_mask)[:, None], 0.0)


def flow_throughput(
    attn: torch.Tensor | AttentionRows,
    source_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    renormalize: bool = True,
    block_size: int | None = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """Per-token attention flow throughput from source tokens to sink tokens (definition: the module docstring).

    Args:
        attn: `[B, T, T]` float32/float64 aggregated attention, `attn[b, j, i]` = attention of query j to key i
            (for example `capture_attention(...)`), or a callable `rows(start, end) -> [B, end - start, T]`
            (blockwise only). Every value given, future positions included, must be finite and non-negative.
        source_mask: bool `[B, T]`, the flow sources (prompt tokens).
        sink_mask: bool `[B, T]`, the flow sinks (answer tokens); disjoint from `source_mask`.
        attention_mask: `[B, T]`, 1 for real tokens, 0 for padding. Padding has no edges and scores 0, so left- and
            right-padded copies of a sequence get the same scores.
        renormalize: divide each row of the edge matrix by its sum (after dropping self, future and padding edges).
        block_size: query rows per slab for the blockwise implementation.
        implementation: "auto" (dense while `B * T * T <= 2**24` and `attn` is a tensor), "dense" or "blockwise".

    Returns:
        `[B, T]` throughput `F * G` in the dtype of `attn`. Tokens that cannot reach a sink, or that no source reaches,
        score 0. A row with no source or no sink token (e.g. a completion whose answer was not found) is all zero.
    """
    if implementation not in ("auto", "dense", "blockwise"):
        raise ValueError(f"implementation must be 'auto', 'dense' or 'blockwise', got {implementation!r}.")
    if implementation == "auto":
        small = isinstance(attn, torch.Tensor) and attn.numel() <= DENSE_MAX_ELEMENTS
        implementation = "dense" if small else "blockwise"
    if implementation == "dense":
        return flow_throughput_dense(
            attn, source_mask, sink_mask, attention_mask=attention_mask, renormalize=renormalize
        )
    return flow_throughput_blockwise(
        attn, source_mask, sink_mask, attention_mask=attention_mask, renormalize=renormalize, block_size=block_size
    )
