"""What the multi-state ops share: input checks, packed documents, the chunked layout, the Triton backend's loader.

The ops (`ops_naive.py`, `ops_chunk.py`, `hf_dla.ops.triton`) and the memory plans (`memory_plans.py`) import from
here; it imports no other hf_dla module, so imports only run down (model -> memory plans, ops -> this module). It sits
flat beside ``modeling_dla.py`` for the same reason as the ops: ``save_pretrained`` copies a custom model's flat
relative imports (and theirs) into the saved folder, so a saved model loads with ``trust_remote_code=True`` where
hf_dla is not installed. The signature and the recurrence of the ops are documented in ``hf_dla/ops/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
import torch.nn.functional as F

# The op backends, named once here (the lowest module) for the dispatch and the config; the memory modes are the keys
# of `memory_plans.MEMORY_PLANS`.
BACKENDS = ("naive", "chunk", "triton")

TRITON_BACKEND = "hf_dla.ops.triton"

# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------


def check_shapes(q, k, v, log_decay, beta, slot_map, lam, initial_state) -> int:
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


# ----------------------------------------------------------------------------------------------------------
# Chunked layout (shared by ``ops_chunk.py`` and ``hf_dla.ops.triton``)
# ----------------------------------------------------------------------------------------------------------


def source_indices(slot_map: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Slot index of every source at every step of its chunk.

    slot_map: (B, N, C, S). Returns (B, N, C, S + C): sources are the S slots at the chunk start, then the C
    tokens of the chunk; -1 where the token is not written yet.
    """
    batch, num_chunks, chunk, _ = slot_map.shape
    device = slot_map.device
    current = torch.cat(
        [
            torch.arange(num_slots, device=device).expand(batch, num_chunks, num_slots),
            torch.full((batch, num_chunks, chunk), -1, dtype=torch.long, device=device),
        ],
        dim=-1,
    )
    steps = []
    for j in range(chunk):
        moved = slot_map[:, :, j].gather(-1, current.clamp_min(0))
        current = torch.where(current >= 0, moved, -1)
        current[..., num_slots + j] = 0  # token j is written into slot 0
        steps.append(current)
    return torch.stack(steps, dim=2)


def pad_time(x: torch.Tensor, pad: int, value: float = 0.0) -> torch.Tensor:
    """Append `pad` steps of `value` to the time axis (dim 1) of a (B, T, ...) tensor."""
    if pad == 0:
        return x
    return F.pad(x, (0, 0) * (x.ndim - 2) + (0, pad), value=value)


def aligned_documents(cu_seqlens: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay packed documents out in one row where every document starts a chunk.

    Returns `source` (T',): the packed position of every laid-out step, -1 for the identity steps that pad each
    document to a multiple of `chunk_size`; and `last_chunks` (T' / chunk_size,) bool: the last chunk of a document.
    """
    lengths = cu_seqlens.diff()
    padded = (lengths + chunk_size - 1) // chunk_size * chunk_size
    ends = padded.cumsum(0)
    position = torch.arange(int(ends[-1]), device=cu_seqlens.device)
    document = torch.searchsorted(ends, position, right=True)
    offset = position - (ends - padded)[document]
    source = torch.where(offset < lengths[document], cu_seqlens[document] + offset, -1)
    last_chunks = torch.zeros(len(position) // chunk_size, dtype=torch.bool, device=cu_seqlens.device)
    last_chunks[ends[lengths > 0] // chunk_size - 1] = True
    return source, last_chunks


def run_documents_chunked(multistate, q, k, v, log_decay, beta, slot_map, lam, cu_seqlens, delta_rule, chunk_size):
    """Packed documents through a chunked backend in one row, restarting the state at every document start.

    Each document is padded with identity steps to a multiple of `chunk_size`, so it starts a chunk; its last chunk
    passes nothing on (zero carry, zero writes), so the next document starts from empty slots. Cost: the packed
    tokens plus less than one chunk per document. Training path: no initial or final states (see `run_documents`).
    `multistate` is the backend's `(q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state,
    delta_rule, chunk_size, last_chunks)` function."""
    cu_seqlens = check_cu_seqlens(cu_seqlens, q.shape[1], q.shape[0]).to(q.device)
    source, last_chunks = aligned_documents(cu_seqlens, chunk_size)
    inside = source >= 0

    def laid_out(x, fill=0.0):
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
        return torch.where(inside.reshape(-1, *[1] * (x.ndim - 2)), x[0, source.clamp_min(0)], fill)[None]

    if slot_map is not None:
        slot_map = laid_out(slot_map, torch.arange(slot_map.shape[-1], device=slot_map.device))
    lam = None if lam is None else laid_out(lam)
    inputs = [laid_out(x) for x in (q, k, v, log_decay, beta)]
    out, _ = multistate(*inputs, slot_map, lam, None, False, delta_rule, chunk_size, last_chunks)
    return out[:, inside], None


def chunk_documents(op, delta_rule, q, k, v, log_decay, beta, slot_map, lam, initial_state, output_final_state,
                    cu_seqlens, chunk_size, multistate):  # fmt: skip
    """`cu_seqlens` dispatch shared by the chunked backends: one chunk-aligned row when no state goes in or out
    (training), else the padded batch of documents (`run_documents`, per-document initial / final states).
    `op` is the backend's public function (it runs each document of the padded batch), `multistate` its row
    function (see `run_documents_chunked`)."""
    if initial_state is None and not output_final_state:
        args = (slot_map, lam, cu_seqlens, delta_rule, chunk_size)
        return run_documents_chunked(multistate, q, k, v, log_decay, beta, *args)
    args = (slot_map, lam, initial_state, output_final_state, cu_seqlens)
    return run_documents(op, q, k, v, log_decay, beta, *args, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------------------
# The Triton backend
# ----------------------------------------------------------------------------------------------------------


def import_triton_backend():
    """The optional Triton backend, `hf_dla.ops.triton` (its ops and its dla plan), imported on first use.

    Imported by name, at call time: it needs the `triton` package, and it is not among the flat files that
    ``save_pretrained`` copies (a remote-code model runs it only where hf_dla is installed). This is the only
    import of another hf_dla module from below it."""
    fix = "use backend='chunk' (CPU) or install the plugin with its Triton extra: pip install 'hf-efficient-reasoning[triton]'"
    if importlib.util.find_spec("triton") is None:
        raise ImportError(f"DLAConfig.backend='triton' needs the `triton` package, which is not installed; {fix}.")
    try:
        return importlib.import_module(TRITON_BACKEND)
    except ImportError as error:
        raise ImportError(
            f"DLAConfig.backend='triton': the kernels ({TRITON_BACKEND}) are not available; {fix}."
        ) from error
