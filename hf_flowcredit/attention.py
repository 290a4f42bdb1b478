"""Capture head-averaged attention probabilities from any Hugging Face causal LM, cheaply.

`capture_attention` runs one no-grad forward with a capturing function registered in transformers'
`AttentionInterface` (its mask function is SDPA's, registered in `AttentionMaskInterface`). In the selected layers
it recomputes the softmax probabilities in fp32, in query chunks, averages them over heads (grouped-query heads
expanded) and adds them to a `[B, T, T]` accumulator; every layer's real output still comes from SDPA. The forward
stops right after the last selected layer, so later layers (and the LM head) are never computed, and no more than
one query chunk of `B x H x chunk x T` probabilities exists at any time.

The model keeps whatever `attn_implementation` it was loaded with (eager, sdpa, flash, ...): it is switched to the
capturing function for the one forward and switched back afterwards, even if the forward fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["CAPTURE_ATTN_IMPLEMENTATION", "capture_attention", "eval_mode", "resolve_layers"]

CAPTURE_ATTN_IMPLEMENTATION = "flowcredit_capture"
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
class _Capture:
    """State of one capturing forward: which layers to read and where their averaged probabilities go."""

    layers: frozenset[int]
    last_layer: int
    accumulator: torch.Tensor  # [B, T, T] fp32
    query_chunk_size: int | None


class _StopForward(Exception):
    """Raised by the last selected layer so the rest of the model is never computed."""


_ACTIVE_CAPTURE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("flowcredit_capture", default=None)


def _add_head_averaged_probabilities(
    capture: _Capture,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> None:
    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    if key.shape[2] != length:
        raise RuntimeError("capture_attention needs a full forward without a KV cache (query and key lengths differ).")
    scaling = head_dim**-0.5 if scaling is None else scaling
    # Query head h reads key/value head h // group, as in transformers' `repeat_kv`: view the query heads by group.
    group = heads // kv_heads
    keys = key.float().transpose(-1, -2)[:, :, None]  # [B, H_kv, 1, D, T]
    chunk = capture.query_chunk_size or max(1, CHUNK_ELEMENTS // (batch * heads * length))
    weight = 1.0 / (heads * len(capture.layers))
    positions = torch.arange(length, device=query.device)
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        queries = query[:, :, start:end].float().reshape(batch, kv_heads, group, end - start, head_dim)
        scores = (queries @ keys).mul_(scaling)  # [B, H_kv, group, chunk, T]; in place from here: one chunk's worth
        if attention_mask is None:
            allowed = (positions[None, :] <= positions[start:end, None])[None, None, None]
        elif attention_mask.dtype == torch.bool:
            allowed = attention_mask[:, :, None, start:end]
        else:  # an additive float mask
            scores.add_(attention_mask[:, :, None, start:end].float())
            allowed = torch.isfinite(scores)
        scores.masked_fill_(~allowed, float("-inf"))
        probabilities = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # fully masked (padding) queries: no weight
        capture.accumulator[:, start:end] += probabilities.sum(dim=(1, 2)) * weight


def _capturing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered in `AttentionInterface`: record probabilities, then let SDPA compute the output."""
    capture = _ACTIVE_CAPTURE.get()
    if capture is None:
        raise RuntimeError(
            f"attn_implementation={CAPTURE_ATTN_IMPLEMENTATION!r} is only usable inside `capture_attention`; "
            "load or set the model with another implementation."
        )
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("capture_attention does not support attention logit softcapping or attention sinks.")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(
            f"{type(module).__name__} has no `layer_idx`; capture_attention cannot tell its layers apart."
        )
    if layer in capture.layers:
        _add_head_averaged_probabilities(capture, query, key, attention_mask, scaling)
        if layer == capture.last_layer:
            raise _StopForward
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


AttentionInterface.register(CAPTURE_ATTN_IMPLEMENTATION, _capturing_attention)
AttentionMaskInterface.register(CAPTURE_ATTN_IMPLEMENTATION, sdpa_mask)


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
def _attn_implementation(model: PreTrainedModel, name: str):
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def capture_attention(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    layers: str | int | Sequence[int] = "middle",
    *,
    position_ids: torch.LongTensor | None = None,
    query_chunk_size: int | None = None,
) -> torch.Tensor:
    """Head- and layer-averaged attention probabilities `[B, T, T]` (fp32) of a causal LM on `input_ids`.

    `attn[b, j, i]` is the attention of query token j to key token i, averaged over all query heads and over the
    selected `layers` (see `resolve_layers`; default "middle": up to 5 evenly spaced layers of the middle third).
    Rows of padding queries are zero. One no-grad forward in eval mode, stopped after the last selected layer;
    `position_ids` is passed to it as is (default: the model's own, as in `model(input_ids, attention_mask)`).
    """
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
    selected = resolve_layers(layers, model.config.get_text_config().num_hidden_layers)
    batch, length = input_ids.shape
    capture = _Capture(
        layers=frozenset(selected),
        last_layer=selected[-1],
        accumulator=torch.zeros(batch, length, length, dtype=torch.float32, device=input_ids.device),
        query_chunk_size=query_chunk_size,
    )
    token = _ACTIVE_CAPTURE.set(capture)
    stopped = False
    try:
        with torch.no_grad(), eval_mode(model), _attn_implementation(model, CAPTURE_ATTN_IMPLEMENTATION):
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    except _StopForward:
        stopped = True
    finally:
        _ACTIVE_CAPTURE.reset(token)
    if not stopped:
        raise RuntimeError(
            f"Layer {selected[-1]} of {type(model).__name__} never called the attention interface: its attention "
            "modules do not dispatch through transformers' AttentionInterface, so they cannot be captured."
        )
    if attention_mask is not None:  # padding queries attend to nothing real: zero rows, whatever the mask function did
        capture.accumulator *= attention_mask[:, :, None].to(capture.accumulator.dtype)
    return capture.accumulator
