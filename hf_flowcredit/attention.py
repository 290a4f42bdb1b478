"""Capture head-averaged attention probabilities from any Hugging Face causal LM, cheaply.

`capture_attention` runs one no-grad forward with a capturing function registered in transformers'
`AttentionInterface` (its mask function is SDPA's, registered in `AttentionMaskInterface`). In the selected layers
it recomputes the softmax probabilities in fp32, in query chunks, averages them over heads (grouped-query heads
expanded) and adds them to a `[B, T, T]` accumulator; every layer's real output still comes from SDPA. Layers with
attention logit softcapping (Gemma 2: `softcap * tanh(logits / softcap)`) or attention sinks (GPT-OSS: one more
logit per head in the softmax normaliser, received by no token) get exact probabilities too, and their output,
which SDPA cannot compute, comes from the eager math (`transformed_logit_attention`). In a single
process the forward stops inside the last selected layer, so later layers (and the LM head) are never computed; with
several torch.distributed processes it runs to the end (a sharded model's forward is a collective). No more than
one query chunk of `B x H x chunk x T` probabilities exists at any time.

`capture_queries_keys` runs the same forward but keeps the selected layers' queries and keys (and how their masks
were built) instead of the `[B, T, T]` matrix; the `QueryKeyAttention` it returns recomputes any block of attention
rows from them, the lazy input of `flow_throughput_blockwise`: O(T * d) memory for any length.

The model keeps whatever `attn_implementation` it was loaded with (eager, sdpa, flash, ...): it is switched to the
capturing function for the one forward and switched back afterwards, even if the forward fails.

The package registers one attention implementation, `"flowcredit"`: inside `capture_attention` it records what flow
needs, inside `intervention.attention_blocking` it removes blocked keys from the mask, then it lets SDPA (or, for
softcapping and sinks, `transformed_logit_attention`) compute the output.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = [
    "CAPTURE_ATTN_IMPLEMENTATION",
    "LogitTransform",
    "QueryKeyAttention",
    "capture_attention",
    "capture_queries_keys",
    "eval_mode",
    "resolve_layers",
    "transformed_logit_attention",
]

# The package's one entry in transformers' AttentionInterface (capture and key blocking both go through it).
CAPTURE_ATTN_IMPLEMENTATION = "flowcredit"
LAYER_PRESETS = ("middle", "early", "late", "all")
MAX_PRESET_LAYERS = 5
# Elements of one query chunk of scores (B * H * chunk * T) when `query_chunk_size` is not given: 128 MiB in fp32.
CHUNK_ELEMENTS = 2**25


def resolve_layers(layers: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Sorted layer indices for a preset or an explicit list.

    "early", "middle", "late": up to 5 evenly spaced layers of the first, middle or last third of the stack;
    "all": every layer; an int or a list of ints: those layers (negative indices count from the end).
    """
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            raise ValueError(f"Unknown layers={layers!r}; use one of {LAYER_PRESETS} or a list of layer indices.")
        if layers == "all":
            return list(range(num_layers))
        third = {"early": 0, "middle": 1, "late": 2}[layers]
        low, high = math.floor(third * num_layers / 3), math.ceil((third + 1) * num_layers / 3)
        span = list(range(low, max(high, low + 1)))
        count = min(MAX_PRESET_LAYERS, len(span))
        if count == 1:
            return span[len(span) // 2 : len(span) // 2 + 1]
        return sorted({span[round(k * (len(span) - 1) / (count - 1))] for k in range(count)})
    indices = [layers] if isinstance(layers, int) else list(layers)
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"layers must be a preset name or a non-empty list of ints, got {layers!r}.")
    bad = [i for i in indices if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a model with {num_layers} layers.")
    return sorted({i % num_layers for i in indices})


@dataclass
class _LayerQueriesKeys:
    """What one selected layer's attention function received, kept to recompute its attention rows later."""

    query: torch.Tensor  # [B, H, T, D] after RoPE and norms, as the attention function received it
    key: torch.Tensor  # [B, H_kv, T, D]
    scaling: float
    mask_recipe: dict | None  # the `sdpa_mask` arguments that built this layer's mask; None: plain causal
    transform: LogitTransform  # softcapping / attention sinks of this layer


@dataclass
class _Capture:
    """State of one capturing forward: which layers to read and where what they give goes.

    Dense mode adds head-averaged probabilities to `accumulator`; query/key mode appends to `queries_keys`.
    """

    layers: frozenset[int]
    last_layer: int
    query_chunk_size: int | None
    stop_early: bool
    accumulator: torch.Tensor | None = None  # [B, T, T], dense mode
    queries_keys: list[_LayerQueriesKeys] | None = None  # query/key mode
    # Masks built by the capture's mask function during this forward, with the arguments that built them: a layer
    # finds its own by identity, so the query/key mode can rebuild any block of it (padding, sliding window, ...).
    masks: list[tuple[torch.Tensor, dict]] = field(default_factory=list)
    reached_last_layer: bool = False


class _StopForward(Exception):
    """Raised by the last selected layer (single process only) so the rest of the model is never computed."""


_ACTIVE_CAPTURE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("flowcredit_capture", default=None)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision models, the model's own precision above that (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


class _Workspace:
    """One reusable buffer for the `[B, H, chunk, kv]` scores: a fresh tensor per chunk would cost a page fault per
    4 KiB (the CPU allocator returns large blocks to the OS) and as much time as the softmax itself."""

    def __init__(self):
        self.buffer = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        size = math.prod(shape)
        if self.buffer is None or self.buffer.numel() < size or self.buffer.dtype != dtype:
            self.buffer = torch.empty(size, dtype=dtype, device=device)
        return self.buffer[:size].view(shape)


@dataclass(frozen=True)
class LogitTransform:
    """What a layer does to its attention logits beyond scaling and masking, as transformers' eager functions do.

    `softcap` (Gemma 2): logits become `softcap * tanh(logits / softcap)` before the mask is applied. `sinks`
    (GPT-OSS, `[H]`, one per query head): one more logit column in the softmax normaliser that no token receives, so
    a query's probabilities over the keys sum to less than 1. None: plain softmax attention.
    """

    softcap: float | None = None
    sinks: torch.Tensor | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> LogitTransform:
        """From the keyword arguments transformers' attention layers pass (`softcap=`, `s_aux=`)."""
        return cls(softcap=kwargs.get("softcap"), sinks=kwargs.get("s_aux"))

    @property
    def is_plain(self) -> bool:
        return self.softcap is None and self.sinks is None


PLAIN = LogitTransform()


def _attention_probabilities(
    queries: torch.Tensor,
    keys_t: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    start: int,
    workspace: _Workspace,
    transform: LogitTransform = PLAIN,
) -> torch.Tensor:
    """Attention probabilities `[B, H_kv, group, n, kv]` of the queries at positions `start..start + n - 1`.

    `queries` [B, H, n, D]; `keys_t` [B * H_kv, D, K] (transposed keys, in the compute dtype); `mask` [B, 1, n, K] is
    bool (True = may attend), an additive float mask, or None for plain causal attention. Only the first
    `kv = start + n` keys are read unless the mask lets a query see later ones. Fully masked rows (padding queries)
    are zero. Query head `h` is `[:, h // group, h % group]`. The result lives in `workspace` until its next use.
    """
    batch, heads, rows, head_dim = queries.shape
    kv_heads = keys_t.shape[0] // batch
    kv_length = start + rows
    if mask is not None:
        later = mask[..., kv_length:] if mask.dtype == torch.bool else torch.isfinite(mask[..., kv_length:])
        kv_length = keys_t.shape[-1] if later.any() else kv_length
        mask = mask[..., :kv_length]
    # Query head h reads key/value head h // group, as in transformers' `repeat_kv`: one batched matrix product per
    # key head over its group of query heads (a broadcast matmul would copy the keys for every query head).
    # The scaling goes on the queries (n x D values) rather than on the scores (n x kv values).
    queries = (queries.to(keys_t.dtype) * scaling).reshape(batch * kv_heads, heads // kv_heads * rows, head_dim)
    scores = workspace.take((batch * kv_heads, queries.shape[1], kv_length), keys_t.dtype, keys_t.device)
    torch.bmm(queries, keys_t[..., :kv_length], out=scores)
    scores = scores.view(batch, kv_heads, -1, rows, kv_length)  # [B, H_kv, group, n, kv]
    if transform.softcap is not None:  # Gemma 2: the logits are squashed before the mask is added
        scores.div_(transform.softcap).tanh_().mul_(transform.softcap)
    if mask is None:  # causal: only keys after the query's own position are masked
        future = torch.ones(rows, rows, dtype=torch.bool, device=scores.device).triu_(1)
        scores[..., start:].masked_fill_(future, float("-inf"))
    else:
        if mask.dtype == torch.bool:
            allowed = mask[:, :, None]
        else:  # an additive float mask
            scores.add_(mask[:, :, None].to(scores.dtype))
            allowed = torch.isfinite(scores)
        scores.masked_fill_(~allowed, float("-inf"))
    if transform.sinks is None:
        torch.softmax(scores, dim=-1, out=scores)
    else:  # the sink is one more logit in each head's normaliser: p = exp(s - logaddexp(logsumexp(s), sink))
        sinks = transform.sinks.detach().to(scores.dtype).view(1, kv_heads, -1, 1)
        normaliser = torch.logaddexp(torch.logsumexp(scores, dim=-1), sinks)  # finite even for fully masked rows
        scores.sub_(normaliser[..., None]).exp_()
    if mask is not None:
        scores.nan_to_num_(0.0)  # fully masked (padding) rows: no weight
    return scores


def _add_head_summed_rows(
    out: torch.Tensor,
    queries: torch.Tensor,
    keys_t: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    start: int,
    weight: float,
    workspace: _Workspace,
    transform: LogitTransform = PLAIN,
) -> None:
    """`out[:, :, :kv] += weight * sum over query heads of the attention probabilities` of the queries at `start..`
    (see `_attention_probabilities` for the arguments)."""
    probabilities = _attention_probabilities(queries, keys_t, mask, scaling, start, workspace, transform)
    width = min(probabilities.shape[-1], out.shape[-1])  # the caller may want fewer columns (QueryKeyAttention)
    out[..., :width].add_(probabilities.sum(dim=(1, 2))[..., :width], alpha=weight)


def transformed_logit_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, transform: LogitTransform = PLAIN, **kwargs
) -> tuple[torch.Tensor, None]:
    """The attention output of a layer with logit softcapping and/or attention sinks, which SDPA cannot compute.

    The math of the model's eager attention (`transform` applied, grouped-query heads, dropout in training), with a
    bool or additive `attention_mask` or None (causal, the queries being the last `q_len` positions), in query
    chunks of `B x H x chunk x K` probabilities, computed in fp32 (fp64 stays fp64). Returns `[B, q_len, H, D_v]` and
    no weights, as transformers' attention functions do.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    scaling = head_dim**-0.5 if scaling is None else scaling
    dtype = _compute_dtype(query.dtype)
    keys_t = _transposed_keys(key, dtype)
    values = value.to(dtype).reshape(batch * kv_heads, kv_length, value.shape[-1])
    output = query.new_empty(batch, heads, q_len, value.shape[-1])
    offset = kv_length - q_len  # with a KV cache the queries are the last positions
    chunk = _chunk_rows(None, batch, heads, kv_length)
    workspace = _Workspace()
    for start in range(0, q_len, chunk):
        end = min(q_len, start + chunk)
        mask = None if attention_mask is None else attention_mask[:, :, start:end]
        probabilities = _attention_probabilities(
            query[:, :, start:end], keys_t, mask, scaling, offset + start, workspace, transform
        )
        if dropout and module.training:
            probabilities = torch.nn.functional.dropout(probabilities, p=dropout, training=True)
        rows, width = end - start, probabilities.shape[-1]
        grouped = probabilities.reshape(batch * kv_heads, -1, width)  # [B * H_kv, group * n, kv]
        output[:, :, start:end] = torch.bmm(grouped, values[:, :width]).view(batch, heads, rows, -1).to(output.dtype)
    return output.transpose(1, 2).contiguous(), None


def _transposed_keys(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, H_kv, kv, D] -> [B * H_kv, D, kv] in `dtype`, contiguous for the batched matrix products."""
    batch, kv_heads, kv_length, head_dim = key.shape
    return key.to(dtype).transpose(-1, -2).reshape(batch * kv_heads, head_dim, kv_length).contiguous()


def _chunk_rows(capture_chunk: int | None, batch: int, heads: int, kv_length: int) -> int:
    return capture_chunk or max(1, CHUNK_ELEMENTS // (batch * heads * kv_length))


def _add_head_averaged_probabilities(
    capture: _Capture,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    transform: LogitTransform,
) -> None:
    batch, heads, length, _ = query.shape
    keys_t = _transposed_keys(key, capture.accumulator.dtype)
    chunk = _chunk_rows(capture.query_chunk_size, batch, heads, length)
    weight = 1.0 / (heads * len(capture.layers))
    workspace = _Workspace()
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        mask = None if attention_mask is None else attention_mask[:, :, start:end]
        _add_head_summed_rows(
            capture.accumulator[:, start:end],
            query[:, :, start:end],
            keys_t,
            mask,
            scaling,
            start,
            weight,
            workspace,
            transform,
        )


def _mask_recipe(capture: _Capture, attention_mask: torch.Tensor | None) -> dict | None:
    if attention_mask is None:
        return None  # SDPA's `is_causal` case: the mask function found nothing but causality to mask
    for mask, recipe in capture.masks:
        if mask is attention_mask:
            return recipe
    raise NotImplementedError(
        "capture_queries_keys cannot rebuild this model's attention mask (it was not made by transformers' mask "
        "interface, or was changed after it); use capture_attention (the dense path) for this model."
    )


def without_blocked_keys(query, key, attention_mask, blocked_keys: torch.Tensor) -> torch.Tensor:
    """`attention_mask` (bool, or None for plain causal) with no query attending to a blocked key that lies before it
    (a blocked token still attends to itself). `blocked_keys` is `[B, K_max]` over the padded sequence's columns."""
    q_len, k_len = query.shape[2], key.shape[2]
    key_pos = torch.arange(k_len, device=query.device)
    query_pos = key_pos[k_len - q_len :]  # queries are the last q_len positions (prefill or cached decoding)
    if attention_mask is None:
        attention_mask = (key_pos[None, :] <= query_pos[:, None])[None, None]
    blocked = blocked_keys[:, None, None, :k_len] & (key_pos[None, :] < query_pos[:, None])
    return attention_mask.bool() & ~blocked


# Which keys are blocked (see `without_blocked_keys`). A context variable rather than a forward argument because
# `generate` refuses keyword arguments that the model's forward does not declare. Set by `attention_blocking`.
BLOCKED_KEYS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("blocked_keys", default=None)


def _record(capture: _Capture, module, query, key, attention_mask, scaling, transform: LogitTransform) -> float:
    """Record what flow needs from one layer's attention call (nothing outside the selected layers); returns the
    scaling the output is to use (the default made explicit in a selected layer, as the recorded rows use it)."""
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(
            f"{type(module).__name__} has no `layer_idx`; capture_attention cannot tell its layers apart."
        )
    if layer in capture.layers:
        if key.shape[2] != query.shape[2]:
            raise RuntimeError(
                "capture_attention needs a full forward without a KV cache (query and key lengths differ)."
            )
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        if capture.queries_keys is None:
            _add_head_averaged_probabilities(capture, query, key, attention_mask, scaling, transform)
        else:
            recipe = _mask_recipe(capture, attention_mask)
            capture.queries_keys.append(_LayerQueriesKeys(query, key, scaling, recipe, transform))
        if layer == capture.last_layer:
            capture.reached_last_layer = True
            if capture.stop_early:
                raise _StopForward
    return scaling


def _flowcredit_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered in `AttentionInterface`: block keys and/or record what flow needs, then the output
    from SDPA, or from `transformed_logit_attention` for a layer with logit softcapping or attention sinks (which
    SDPA cannot compute)."""
    capture, blocked_keys = _ACTIVE_CAPTURE.get(), BLOCKED_KEYS.get()
    if capture is None and blocked_keys is None:
        raise RuntimeError(
            f"attn_implementation={CAPTURE_ATTN_IMPLEMENTATION!r} is only usable inside `capture_attention` or "
            "`attention_blocking`; load or set the model with another implementation."
        )
    if blocked_keys is not None:
        attention_mask = without_blocked_keys(query, key, attention_mask, blocked_keys)
    transform = LogitTransform.from_kwargs(kwargs)
    if capture is not None:
        scaling = _record(capture, module, query, key, attention_mask, scaling, transform)
    if not transform.is_plain:
        return transformed_logit_attention(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, transform=transform
        )
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _recording_sdpa_mask(*args, **kwargs):
    """SDPA's mask function, remembering the arguments of every mask it builds (see `_Capture.masks`)."""
    mask = sdpa_mask(*args, **kwargs)
    capture = _ACTIVE_CAPTURE.get()
    if capture is not None and mask is not None:
        arguments = dict(inspect.signature(sdpa_mask).bind(*args, **kwargs).arguments)
        capture.masks.append((mask, {**arguments, **arguments.pop("kwargs", {})}))
    return mask


AttentionInterface.register(CAPTURE_ATTN_IMPLEMENTATION, _flowcredit_attention)
AttentionMaskInterface.register(CAPTURE_ATTN_IMPLEMENTATION, _recording_sdpa_mask)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Dropout off for a scoring pass; the previous train/eval mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def attn_implementation_set_to(model: PreTrainedModel, name: str):
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _is_multi_process() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


def _check_inputs(model, input_ids, attention_mask, query_chunk_size) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}.")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}."
        )
    if query_chunk_size is not None and (not isinstance(query_chunk_size, int) or query_chunk_size < 1):
        raise ValueError(f"query_chunk_size must be a positive int, got {query_chunk_size!r}.")
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"capture_attention needs a transformers PreTrainedModel, got {type(model).__name__}.")


def _run_capture(model, input_ids, attention_mask, position_ids, capture: _Capture) -> None:
    """One no-grad, eval-mode forward with the capturing attention function; `capture` receives what it records.

    With `capture.stop_early` the forward ends inside the last selected layer. Otherwise every layer runs (a sharded
    model's forward is a collective: FSDP and ZeRO-3 gather each layer's parameters in hooks around its forward, so
    a forward that stops part-way on one rank leaves the others waiting) and only the last position's logits are
    computed, where the model allows it.
    """
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if not capture.stop_early and "logits_to_keep" in inspect.signature(model.forward).parameters:
        inputs["logits_to_keep"] = 1
    token = _ACTIVE_CAPTURE.set(capture)
    try:
        with torch.no_grad(), eval_mode(model), attn_implementation_set_to(model, CAPTURE_ATTN_IMPLEMENTATION):
            model(**inputs)
    except _StopForward:
        pass
    finally:
        _ACTIVE_CAPTURE.reset(token)
        capture.masks.clear()  # the materialised masks are not needed after the forward
    if not capture.reached_last_layer:
        raise RuntimeError(
            f"Layer {capture.last_layer} of {type(model).__name__} never called the attention interface: its "
            "attention modules do not dispatch through transformers' AttentionInterface, so they cannot be captured."
        )


def _new_capture(model, layers, query_chunk_size, stop_early) -> _Capture:
    selected = resolve_layers(layers, model.config.get_text_config().num_hidden_layers)
    return _Capture(
        layers=frozenset(selected),
        last_layer=selected[-1],
        query_chunk_size=query_chunk_size,
        stop_early=not _is_multi_process() if stop_early is None else stop_early,
    )


def capture_attention(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    layers: str | int | Sequence[int] = "middle",
    *,
    position_ids: torch.LongTensor | None = None,
    query_chunk_size: int | None = None,
    stop_early: bool | None = None,
) -> torch.Tensor:
    """Head- and layer-averaged attention probabilities `[B, T, T]` of a causal LM on `input_ids`.

    `attn[b, j, i]` is the attention of query token j to key token i, averaged over all query heads and over the
    selected `layers` (see `resolve_layers`; default "middle": up to 5 evenly spaced layers of the middle third).
    Rows of padding queries are zero. fp32 (fp64 for an fp64 model). One no-grad forward in eval mode;
    `position_ids` is passed to it as is (default: the model's own, as in `model(input_ids, attention_mask)`).
    `stop_early` (default: True in a single process, False when torch.distributed runs several) ends the forward
    inside the last selected layer; without it every layer runs, as sharded models (FSDP, ZeRO-3) need.
    """
    _check_inputs(model, input_ids, attention_mask, query_chunk_size)
    capture = _new_capture(model, layers, query_chunk_size, stop_early)
    batch, length = input_ids.shape
    dtype = _compute_dtype(model.dtype)
    capture.accumulator = torch.zeros(batch, length, length, dtype=dtype, device=input_ids.device)
    _run_capture(model, input_ids, attention_mask, position_ids, capture)
    if attention_mask is not None:  # padding queries attend to nothing real: zero rows, whatever the mask function did
        capture.accumulator *= attention_mask[:, :, None].to(capture.accumulator.dtype)
    return capture.accumulator


class QueryKeyAttention:
    """The head- and layer-averaged attention of `capture_attention`, recomputed block by block from queries and keys.

    Returned by `capture_queries_keys`. Calling it as `attn(start, end)` gives the rows of queries `start..end-1`,
    `[B, end - start, end]` (keys after `end - 1` are never attended to by these queries in a causal model, so those
    columns are left out): the lazy input `flow_throughput_blockwise` takes. Only the queries and keys of the
    selected layers are held, O(T * d) memory; a call holds one query chunk of `B x H x chunk x end` scores.
    `dense()` builds the full `[B, T, T]` matrix (for tests and small inputs).
    """

    def __init__(
        self, layers: list[_LayerQueriesKeys], attention_mask: torch.Tensor | None, query_chunk_size: int | None
    ):
        self.layers = layers
        self.attention_mask = attention_mask
        self.query_chunk_size = query_chunk_size
        batch, _, self.length, _ = layers[0].query.shape
        self.shape = (batch, self.length, self.length)
        self.dtype = _compute_dtype(layers[0].query.dtype)
        self.device = layers[0].query.device
        self.workspace = _Workspace()

    def __call__(self, start: int, end: int) -> torch.Tensor:
        if not 0 <= start < end <= self.length:
            raise ValueError(f"rows {start}..{end - 1} are outside the sequence of {self.length} tokens.")
        batch = self.shape[0]
        rows = torch.zeros(batch, end - start, end, dtype=self.dtype, device=self.device)
        for layer in self.layers:
            self._add_layer(rows, layer, start, end)
        if self.attention_mask is not None:  # padding queries: zero rows, as in capture_attention
            rows *= self.attention_mask[:, start:end, None].to(rows.dtype)
        return rows

    def _add_layer(self, rows: torch.Tensor, layer: _LayerQueriesKeys, start: int, end: int) -> None:
        batch, heads, _, _ = layer.query.shape
        chunk = _chunk_rows(self.query_chunk_size, batch, heads, end)
        weight = 1.0 / (heads * len(self.layers))
        masks = self._masks(layer, start, end)
        # Keys after `end - 1` matter only to a mask that lets a query see later keys (not causal; e.g. bidirectional
        # image tokens): then every key is read, so the softmax normaliser stays exact.
        kv_length = self.length if masks is not None and masks[..., end:].any() else end
        keys_t = _transposed_keys(layer.key[:, :, :kv_length], self.dtype)
        for chunk_start in range(start, end, chunk):
            chunk_end = min(end, chunk_start + chunk)
            mask = None if masks is None else masks[:, :, chunk_start - start : chunk_end - start, :kv_length]
            query = layer.query[:, :, chunk_start:chunk_end]
            out = rows[:, chunk_start - start : chunk_end - start]
            _add_head_summed_rows(
                out, query, keys_t, mask, layer.scaling, chunk_start, weight, self.workspace, layer.transform
            )

    def _masks(self, layer: _LayerQueriesKeys, start: int, end: int) -> torch.Tensor | None:
        """This layer's attention mask for queries `start..end-1`, rebuilt by the mask function that made it."""
        if layer.mask_recipe is None:
            return None
        recipe = layer.mask_recipe
        block = {"q_length": end - start, "q_offset": recipe.get("q_offset", 0) + start}
        no_skip = {"allow_is_causal_skip": False, "allow_is_bidirectional_skip": False}  # always a tensor
        return sdpa_mask(**{**recipe, **block, **no_skip})

    def dense(self) -> torch.Tensor:
        """The full `[B, T, T]` matrix (what `capture_attention` returns)."""
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        block = max(1, CHUNK_ELEMENTS // (self.shape[0] * self.length))
        for start in range(0, self.length, block):
            end = min(self.length, start + block)
            dense[:, start:end, :end] = self(start, end)
        return dense


def capture_queries_keys(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    layers: str | int | Sequence[int] = "middle",
    *,
    position_ids: torch.LongTensor | None = None,
    query_chunk_size: int | None = None,
    stop_early: bool | None = None,
) -> QueryKeyAttention:
    """`capture_attention` without the `T x T` matrix: keeps each selected layer's queries and keys instead.

    Same arguments and the same (lazy) result: `attn(start, end)` equals `capture_attention(...)[:, start:end, :end]`.
    The queries and keys are kept exactly as the attention function received them (after RoPE and norms, before
    grouped-query heads are expanded), with the layer's scaling and mask (causal, padding, sliding window, ...,
    rebuilt block by block by the mask function that made it). Memory: the selected layers' queries and keys,
    `O(T * d)`, in the model's dtype.
    """
    _check_inputs(model, input_ids, attention_mask, query_chunk_size)
    capture = _new_capture(model, layers, query_chunk_size, stop_early)
    capture.queries_keys = []
    _run_capture(model, input_ids, attention_mask, position_ids, capture)
    return QueryKeyAttention(capture.queries_keys, attention_mask, query_chunk_size)
