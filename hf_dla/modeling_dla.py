"""Dynamic Linear Attention (DLA) models: Mamba-2 / Gated DeltaNet mixers with multi-state memory.

Top to bottom: generation cache, norms, memory read weights, the two mixers, the block, `DLAModel`,
`DLAForCausalLM`. The recurrence is in `ops_naive.py` / `ops_chunk.py` (chosen by `ops_dispatch.py`, sharing
`ops_utils.py`) and the slot decisions in `memory_plans.py`; these flat sibling modules are copied with this file
by `save_pretrained`, so a saved model loads with `trust_remote_code=True` where `hf_dla` is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_dla import DLAConfig
from .memory_plans import MemoryPlan, PlanState, build_memory_plan
from .ops_dispatch import get_multistate_op

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


class DLACacheLayer(LinearAttentionLayer):
    """One layer's decoding state: the short-conv window, the slot states (B, H, S, K, V) and the plan state
    (slot counts, information, summaries). Every tensor has a fixed size: memory is constant in the length."""

    def __init__(self):
        super().__init__(number_of_states=1)
        self.plan_state: PlanState | None = None

    def reset(self) -> None:
        super().reset()
        self.plan_state = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.plan_state is not None:
            self.plan_state = self.plan_state.index_select(beam_idx)

    def tensors(self) -> list[torch.Tensor]:
        held = [t for t in (*self.conv_states.values(), *self.recurrent_states.values()) if t is not None]
        return held + (self.plan_state.tensors() if self.plan_state is not None else [])


class DLACache(Cache):
    """Generation cache of a [`DLAForCausalLM`]: one [`DLACacheLayer`] per layer."""

    def __init__(self, config: DLAConfig):
        super().__init__(layers=[DLACacheLayer() for _ in range(config.num_hidden_layers)])

    def get_plan_state(self, layer_idx: int) -> PlanState | None:
        return self.layers[layer_idx].plan_state

    def update_plan_state(self, layer_idx: int, plan_state: PlanState) -> None:
        self.layers[layer_idx].plan_state = plan_state

    def memory_bytes(self) -> int:
        """Bytes held by all layers (conv windows, slot states, plan states)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


class DLARMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(
            hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon
        )
        return self.weight * hidden_states.to(input_dtype)


class DLARMSNormGated(nn.Module):
    """Gated RMSNorm over groups of `group_size` channels. Mamba-2 gates before normalising
    (`norm_before_gate=False`), Gated DeltaNet normalises each head, then gates."""

    def __init__(self, hidden_size: int, group_size: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states, gate = hidden_states.float(), F.silu(gate.float())
        if not self.norm_before_gate:
            hidden_states = hidden_states * gate
        groups = hidden_states.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        hidden_states = self.weight * groups.flatten(-2)
        if self.norm_before_gate:
            hidden_states = hidden_states * gate
        return hidden_states.to(input_dtype)


class DLAMemoryReadWeights(nn.Module):
    """Query-dependent read weights ``lambda_t = softplus(L * (W x_t + b))``, one per head and slot index.
    `W` starts at zero and `b` at softplus^-1(1), so lambda starts at 1: a fresh model is its backbone."""

    def __init__(self, hidden_size: int, num_heads: int, num_slots: int):
        super().__init__()
        self.num_heads, self.num_slots = num_heads, num_slots
        self.proj = nn.Linear(hidden_size, num_heads * num_slots)
        self.scale = nn.Parameter(torch.ones(num_heads, num_slots))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden_states).unflatten(-1, (self.num_heads, self.num_slots))
        return F.softplus(self.scale * logits)


def _mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padding positions so they neither write to the state nor leak through the conv window."""
    if attention_mask is None:
        return hidden_states
    return hidden_states * attention_mask[:, :, None].to(hidden_states.dtype)


def packed_causal_conv(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """Depthwise causal conv (weight (C, 1, W)) over documents packed into one row (1, T, C): a tap that would
    reach back past its document's start reads zero, as when the document runs alone. W shifted products, in place
    of a padded batch of the documents."""
    seq_len, width = hidden_states.shape[1], weight.shape[-1]
    position = torch.arange(seq_len, device=hidden_states.device)
    cu_seqlens = cu_seqlens.to(hidden_states.device)
    since_start = position - cu_seqlens[torch.searchsorted(cu_seqlens, position, right=True) - 1]
    padded = F.pad(hidden_states, (0, 0, width - 1, 0))
    out = torch.zeros_like(hidden_states) if bias is None else bias.expand_as(hidden_states)
    for tap in range(width):
        lag = width - 1 - tap  # this tap reads token t - lag
        reach = (since_start >= lag).to(hidden_states.dtype)[None, :, None]
        out = out + padded[:, tap : tap + seq_len] * reach * weight[:, 0, tap]
    return out


def packed_cu_seqlens(
    shape: tuple[int, int],
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Document boundaries of a packed batch of `shape` (B, T), as fla-style `cu_seqlens` over its B * T
    flattened tokens; None when every row holds one document (the ordinary path).

    Taken from the first given of: `cu_seq_lens` (flash-attention's `cu_seq_lens_q` / `_k`, over the flattened
    tokens), `seq_idx` (B, T) document index per token, `position_ids` (B, T): a document starts at position 0.
    Every row starts a document; padding (attention_mask 0), and the first real token after left padding, do not.
    """
    batch, seq_len = shape
    device = (cu_seq_lens if cu_seq_lens is not None else seq_idx if seq_idx is not None else position_ids).device
    starts = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    if cu_seq_lens is not None:
        bounds = cu_seq_lens.reshape(-1).long()
        if int(bounds[-1]) != batch * seq_len:
            raise ValueError(
                f"cu_seq_lens_q / cu_seq_lens_k must end at the number of packed tokens, B * T = {batch * seq_len}; "
                f"got {bounds.tolist()}. Pass the boundaries of the flattened batch (as TRL's padding-free collator does)."
            )
        starts.view(-1)[bounds[:-1].clamp(0, batch * seq_len - 1)] = True
    else:
        ids = seq_idx if seq_idx is not None else position_ids
        if ids.shape[-1] != seq_len:
            raise ValueError(f"position_ids / seq_idx must be (B, T) = {(batch, seq_len)}; got {tuple(ids.shape)}.")
        ids = ids.expand(batch, seq_len)
        if seq_idx is not None:
            starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        else:
            starts = ids == 0
        if attention_mask is not None:
            valid = attention_mask.bool()
            starts &= valid & (valid.long().cumsum(1) > 1)  # left padding + first token: one document
    starts[:, 0] = True
    if int(starts.sum()) == batch:
        return None
    total = torch.tensor([batch * seq_len], device=device)
    return torch.cat([starts.reshape(-1).nonzero().flatten(), total])


class DLAMixerBase(nn.Module):
    """What both mixers share: the causal short conv with its cache window, the memory plan, the read
    weights, and the call of the multi-state op (naive step when decoding one token from a cache)."""

    def __init__(self, config: DLAConfig, layer_idx: int, conv_channels: int, conv_bias: bool):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.conv_kernel_size = config.conv_kernel
        self.conv1d = nn.Conv1d(
            conv_channels,
            conv_channels,
            kernel_size=config.conv_kernel,
            groups=conv_channels,
            padding=config.conv_kernel - 1,
            bias=conv_bias,
        )
        self.read_weights = (
            None
            if config.memory == "vanilla"
            else DLAMemoryReadWeights(config.hidden_size, config.num_heads, config.num_slots)
        )
        self.op = get_multistate_op(config.backend, config.mixer)
        self.plan: MemoryPlan = build_memory_plan(
            config.memory, config.max_states, config.merge_threshold, backend=config.backend
        )
        self.step_op = get_multistate_op("naive", config.mixer)
        self.chunk_kwargs = {} if config.backend == "naive" else {"chunk_size": config.chunk_size}

    def causal_conv(self, hidden_states: torch.Tensor, cache: DLACache | None, cu_seqlens=None) -> torch.Tensor:
        """Depthwise causal conv over (B, T, C); with a cache, continue from (and update) its window. With
        `cu_seqlens` (documents packed into one row) each document is convolved alone: no window spans two."""
        if cu_seqlens is not None:
            return packed_causal_conv(hidden_states, self.conv1d.weight, self.conv1d.bias, cu_seqlens)
        seq_len = hidden_states.shape[1]
        window = hidden_states.transpose(1, 2)
        if cache is not None:
            window = cache.update_conv_state(window, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        window = F.pad(window, (self.conv_kernel_size - 1, 0))
        out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=window.shape[1])
        return out[..., -seq_len:].transpose(1, 2)

    def recur(
        self, q, k, v, log_decay, beta, plan_keys, read_input, attention_mask, cache, memory_trace, cu_seqlens=None
    ):
        """Plan the slots from `plan_keys`, then run the op; read/write the cache when given. With `cu_seqlens`
        (documents packed into one row, no cache) the plan and the recurrence restart at every document start."""
        batch, seq_len = q.shape[:2]
        valid = (
            torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        plan_state = cache.get_plan_state(self.layer_idx) if cache is not None else None
        if plan_state is None:
            plan_state = self.plan.init_state(batch, plan_keys.shape[-2] * plan_keys.shape[-1], q.device)
        if cu_seqlens is not None:
            planned = self.plan.plan_documents(plan_keys, valid, cu_seqlens)
        else:
            planned = self.plan(plan_keys, valid, plan_state)
        lam = self.read_weights(read_input) if self.read_weights is not None else None
        initial_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if initial_state is not None and seq_len == 1:
            op, extra = self.step_op, {}
        else:
            op, extra = self.op, self.chunk_kwargs
        if cu_seqlens is not None:
            extra = {**extra, "cu_seqlens": cu_seqlens}
        out, final_state = op(
            q,
            k,
            v,
            log_decay,
            beta,
            planned.slot_map,
            lam,
            initial_state,
            output_final_state=cache is not None,
            **extra,
        )
        if cache is not None:
            cache.update_recurrent_state(final_state, self.layer_idx)
            cache.update_plan_state(self.layer_idx, planned.state)
        if memory_trace is not None:
            memory_trace.append(
                {"layer": self.layer_idx, "state": planned.state, "trace": planned.trace, "valid": valid}
            )
        return out


class DLAMamba2Mixer(DLAMixerBase):
    """Mamba-2 (SSD) mixer with multi-state memory. Parameter names follow transformers' `Mamba2Mixer`, so
    its weights load as they are; q = C, k = B, v = x, log-decay = dt * A, write strength = dt."""

    def __init__(self, config: DLAConfig, layer_idx: int):
        self.intermediate_size = config.expand * config.hidden_size
        self.n_groups, self.state_size, self.head_dim = config.n_groups, config.state_size, config.head_dim
        conv_dim = self.intermediate_size + 2 * self.n_groups * self.state_size
        super().__init__(config, layer_idx, conv_dim, conv_bias=True)
        self.time_step_limit = tuple(config.time_step_limit)
        self.act = ACT2FN[config.hidden_act]
        self.in_proj = nn.Linear(config.hidden_size, self.intermediate_size + conv_dim + self.num_heads, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = DLARMSNormGated(
            self.intermediate_size,
            self.intermediate_size // self.n_groups,
            config.rms_norm_eps,
            norm_before_gate=False,
        )
        self.out_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, cache=None, memory_trace=None, cu_seqlens=None):
        batch, seq_len, _ = hidden_states.shape
        hidden_states = _mask_padding(hidden_states, attention_mask)
        gate, xbc, dt = self.in_proj(hidden_states).split(
            [self.intermediate_size, self.conv1d.in_channels, self.num_heads], dim=-1
        )
        xbc = _mask_padding(self.act(self.causal_conv(xbc, cache, cu_seqlens)), attention_mask)
        group_width = self.n_groups * self.state_size
        x, keys, queries = xbc.split([self.intermediate_size, group_width, group_width], dim=-1)
        dt = F.softplus(dt + self.dt_bias).clamp(*self.time_step_limit)
        log_decay = dt * -torch.exp(self.A_log.float())
        keys = keys.unflatten(-1, (self.n_groups, self.state_size))
        heads_per_group = self.num_heads // self.n_groups
        values = x.unflatten(-1, (self.num_heads, self.head_dim))
        y = self.recur(
            queries.unflatten(-1, (self.n_groups, self.state_size)).repeat_interleave(heads_per_group, dim=2),
            keys.repeat_interleave(heads_per_group, dim=2),
            values,
            log_decay,
            dt,
            keys,  # the plan compares the group keys: repeating them per head leaves every cosine unchanged
            hidden_states,
            attention_mask,
            cache,
            memory_trace,
            cu_seqlens,
        )
        y = y + self.D[:, None] * values
        y = self.norm(y.reshape(batch, seq_len, -1), gate)
        return self.out_proj(y.to(hidden_states.dtype))


class DLAGatedDeltaNetMixer(DLAMixerBase):
    """Gated DeltaNet mixer (as in Qwen3-Next / fla) with multi-state memory: short conv on q, k, v; L2-normalised
    q and k; beta = sigmoid(b); log-decay g = -exp(A_log) * softplus(a + dt_bias); per-head gated RMSNorm."""

    def __init__(self, config: DLAConfig, layer_idx: int):
        self.key_dim, self.value_dim = config.state_size, config.head_dim
        key_width, value_width = config.num_heads * config.state_size, config.num_heads * config.head_dim
        super().__init__(config, layer_idx, 2 * key_width + value_width, conv_bias=False)
        self.widths = [key_width, key_width, value_width]
        self.q_proj = nn.Linear(config.hidden_size, key_width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, key_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.a_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.norm = DLARMSNormGated(value_width, self.value_dim, config.rms_norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(value_width, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, cache=None, memory_trace=None, cu_seqlens=None):
        batch, seq_len, _ = hidden_states.shape
        hidden_states = _mask_padding(hidden_states, attention_mask)
        qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], -1)
        qkv = _mask_padding(F.silu(self.causal_conv(qkv, cache, cu_seqlens)), attention_mask)
        q, k, v = (x.unflatten(-1, (self.num_heads, -1)) for x in qkv.split(self.widths, dim=-1))
        q = F.normalize(q, dim=-1, eps=1e-6) * self.key_dim**-0.5
        k = F.normalize(k, dim=-1, eps=1e-6)
        beta = torch.sigmoid(self.b_proj(hidden_states))
        log_decay = -torch.exp(self.A_log.float()) * F.softplus(self.a_proj(hidden_states).float() + self.dt_bias)
        y = self.recur(q, k, v, log_decay, beta, k, hidden_states, attention_mask, cache, memory_trace, cu_seqlens)
        y = self.norm(y.reshape(batch, seq_len, -1), self.g_proj(hidden_states))
        return self.out_proj(y.to(hidden_states.dtype))


class DLAMLP(nn.Module):
    def __init__(self, config: DLAConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class DLABlock(GradientCheckpointingLayer):
    """Pre-norm residual block: Mamba-2 blocks hold only the mixer, Gated DeltaNet blocks add a SwiGLU MLP."""

    def __init__(self, config: DLAConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = DLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        mixer_class = DLAMamba2Mixer if config.mixer == "mamba2" else DLAGatedDeltaNetMixer
        self.mixer = mixer_class(config, layer_idx)
        if config.mixer == "gated_deltanet":
            self.mlp_norm = DLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = DLAMLP(config)
        else:
            self.mlp_norm = self.mlp = None

    def forward(self, hidden_states, attention_mask=None, cache=None, memory_trace=None, cu_seqlens=None):
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        # The residual stream may be fp32 while the weights are bf16: each sublayer gets the weights' dtype.
        normed = self.norm(hidden_states.to(self.norm.weight.dtype))
        hidden_states = residual + self.mixer(normed, attention_mask, cache, memory_trace, cu_seqlens)
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.mlp_norm(hidden_states.to(self.mlp_norm.weight.dtype)))
        return hidden_states


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


class DLAPreTrainedModel(PreTrainedModel):
    config_class = DLAConfig
    config: DLAConfig
    base_model_prefix = "model"
    _no_split_modules = ["DLABlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        # No softmax attention, so no `_supports_sdpa` / `_supports_flash_attn`: there is nothing for them to run. A
        # loader that asks for an implementation anyway (TRL scripts and `hf-compress sft` ask for sdpa or
        # flash_attention_2) gets the model as it is, where Mamba2ForCausalLM would refuse to load; flash-attention's
        # packed-sequence kwargs (cu_seq_lens_q / _k) are honoured whatever is set.
        if attn_implementation not in (None, "eager"):
            logger.info(
                f"DLA models have no softmax attention: attn_implementation={attn_implementation!r} is ignored."
            )
        return "eager"

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes the saved class into `auto_map` (AutoModelForCausalLM for DLAForCausalLM); the backbone is
        # added so that `AutoModel.from_pretrained(..., trust_remote_code=True)` also loads where hf_dla is absent.
        module = type(self).__module__.rsplit(".", 1)[-1]
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": f"{module}.DLAModel"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        # Embeddings and linear layers ~ N(0, initializer_range), norms at 1 (transformers' defaults); the mixers as
        # their reference implementations initialise them (docs/hf_dla.md, "Initialisation").
        super()._init_weights(module)
        config = self.config
        if isinstance(module, DLAMamba2Mixer):
            _init_mamba2_mixer(module, config)
        elif isinstance(module, DLAGatedDeltaNetMixer):
            # A ~ U(1, 16) as in fla, spread deterministically over the heads; dt in [time_step_min, time_step_max]
            # log-spaced over the heads, dt_bias = softplus^-1(dt)
            heads = module.num_heads
            init.copy_(module.A_log, torch.log(torch.linspace(1.0, 16.0, heads)))
            dt = torch.exp(torch.linspace(math.log(config.time_step_min), math.log(config.time_step_max), heads))
            init.copy_(module.dt_bias, _inverse_softplus(dt.clamp(min=config.time_step_floor)))
        if isinstance(module, DLAMemoryReadWeights):
            # By default W = 0 and softplus(b) = 1: lambda = 1 exactly at any width (W ~ N(0, 0.02) on RMS-normalised
            # input spreads Wx with std 0.02 * sqrt(hidden), lambda in [0.3, 2.2] at 1536), so a fresh model is its
            # backbone; W still gets gradients (dL/dW = dL/dlogit * x). A positive read_weights_init_std spreads Wx
            # by that std at any width (helped loglinear learn MQAR from scratch, see RESULTS.md).
            if config.read_weights_init_std > 0:
                init.normal_(module.proj.weight, std=config.read_weights_init_std / math.sqrt(config.hidden_size))
            else:
                init.zeros_(module.proj.weight)
            init.constant_(module.proj.bias, math.log(math.e - 1.0))
            init.ones_(module.scale)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _init_mamba2_mixer(module: DLAMamba2Mixer, config: DLAConfig) -> None:
    """transformers' `Mamba2ForCausalLM` initialisation of a mixer (in_proj is N(0, initializer_range) already): S4D
    real A = 1..H, D = 1, dt drawn log-uniformly in [time_step_min, time_step_max] per head (floored at
    time_step_floor) with dt_bias = softplus^-1(dt), the conv and out_proj as torch's own Conv1d / Linear defaults
    (Kaiming uniform, a = sqrt(5)), the conv bias at 0, out_proj / sqrt(num_hidden_layers) if
    rescale_prenorm_residual."""
    heads = module.num_heads
    init.copy_(module.A_log, torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
    init.ones_(module.D)
    log_min, log_max = math.log(config.time_step_min), math.log(config.time_step_max)
    dt = torch.exp(torch.rand(heads) * (log_max - log_min) + log_min).clamp(min=config.time_step_floor)
    init.copy_(module.dt_bias, _inverse_softplus(dt))
    init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
    init.zeros_(module.conv1d.bias)
    init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
    if config.rescale_prenorm_residual:
        init.copy_(module.out_proj.weight, module.out_proj.weight / math.sqrt(config.num_hidden_layers))


@dataclass
class DLAMemoryReport:
    """Where each layer opened and merged memory slots over one sequence (see `DLAForCausalLM.memory_report`).

    `layers[i]` holds `slots` (oldest first: `start`, `end` token positions, `tokens` n, `information` u,
    `density` u / n) and per-token `drift`, `opened` and `merged` (rank of the merged pair, -1 for none).
    """

    tokens: list[int]
    layers: list[dict]

    def to_markdown(self) -> str:
        lines = ["| layer | slots (start-end: density) |", "|---|---|"]
        for layer in self.layers:
            spans = ", ".join(f"{s['start']}-{s['end']}: {s['density']:.2f}" for s in layer["slots"])
            lines.append(f"| {layer['layer']} | {spans} |")
        return "\n".join(lines)

    def plot(self, path: str, token_labels: list[str] | None = None) -> str:
        """Draw the slots over the tokens (one row per layer, shade = density), opening and merging events and
        the drift; save a PNG at `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        num_layers, length = len(self.layers), len(self.tokens)
        fig, axes = plt.subplots(num_layers, 1, figsize=(max(6, length / 8), 1.8 * num_layers), squeeze=False)
        densities = [s["density"] for layer in self.layers for s in layer["slots"]] or [1.0]
        top = max(densities) or 1.0
        for ax, layer in zip(axes[:, 0], self.layers):
            for slot in layer["slots"]:
                ax.axvspan(
                    slot["start"] - 0.5, slot["end"] + 0.5, color=plt.cm.viridis(slot["density"] / top), alpha=0.6
                )
                ax.axvline(slot["start"] - 0.5, color="black", lw=0.8)
            ax.plot(range(length), layer["drift"], color="crimson", lw=1, label="drift")
            opened = [t for t, o in enumerate(layer["opened"]) if o]
            merged = [t for t, m in enumerate(layer["merged"]) if m >= 0]
            ax.scatter(opened, [1.9] * len(opened), marker="v", s=12, color="black", label="slot opened")
            ax.scatter(merged, [1.7] * len(merged), marker="x", s=12, color="orange", label="pair merged")
            ax.set_ylim(0, 2)
            ax.set_xlim(-0.5, length - 0.5)
            ax.set_ylabel(f"layer {layer['layer']}")
        axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
        axes[0, 0].set_title("DLA memory slots (shade: information density u/n; line: drift)")
        if token_labels is not None:
            axes[-1, 0].set_xticks(range(length), token_labels, rotation=90, fontsize=6)
        axes[-1, 0].set_xlabel("token")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _check_not_empty(name: str, inputs: torch.Tensor) -> None:
    """A batch of no sequences, or of sequences with no tokens, has nothing to run (and no last token to decode
    from): say so before the layers fail on an empty reshape or convolution."""
    if inputs.ndim >= 2 and inputs.shape[0] == 0:
        raise ValueError(
            f"{name} has shape {tuple(inputs.shape)}: an empty batch (B = 0); pass at least one sequence."
        )
    if inputs.ndim >= 2 and inputs.shape[1] == 0:
        raise ValueError(
            f"{name} has shape {tuple(inputs.shape)}: sequences of no tokens (T = 0); DLA models need at least one "
            "token per sequence (to generate from nothing, start the prompt with the BOS token)."
        )


class DLAModel(DLAPreTrainedModel):
    def __init__(self, config: DLAConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DLABlock(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.norm_f = DLARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    # `cache` is transformers' name since 5.x (Llama and Mamba-2 take the older names with a deprecation notice).
    # `return_dict=False` (or `config.return_dict=False`): the output as a tuple, None fields left out, as transformers.
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DLACache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        memory_trace: list | None = None,
        position_ids: torch.LongTensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        cache (`DLACache`, *optional*): decoding state of a previous call, updated in place; the inputs continue
            that sequence (whatever `use_cache` says, as in transformers' Mamba-2). `past_key_values=` is accepted.
        use_cache (`bool`, *optional*): return the cache (a new one when none is passed); defaults to
            `config.use_cache` in eval mode and to False in training and with gradient checkpointing.
        memory_trace (`list`, *optional*): if given, each layer appends its memory plan (slots, drift, merges).
        position_ids / cu_seq_lens_q / cu_seq_lens_k / seq_idx (*optional*): documents packed into a row, as TRL's
            padding-free collator (`SFTTrainer(padding_free=True)`, `packing=True`) or transformers'
            `DataCollatorWithFlattening` pass them: the state, the conv window and the memory slots restart at every
            document start. Positions are otherwise unused (no positional encoding). No cache with packed documents.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        _check_not_empty(*(("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)))
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputed blocks would write the cache twice
        if cache is not None and not isinstance(cache, DLACache):
            raise TypeError(f"DLA models need a DLACache, got {type(cache).__name__}; pass cache=DLACache(config).")
        if use_cache and cache is None:
            cache = DLACache(self.config)
        if attention_mask is not None:
            attention_mask = attention_mask[:, -inputs_embeds.shape[1] :]
        cu_seqlens = None
        if any(x is not None for x in (position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx)):
            cu_seq_lens = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
            cu_seqlens = packed_cu_seqlens(inputs_embeds.shape[:2], attention_mask, position_ids, cu_seq_lens, seq_idx)
        if cu_seqlens is not None:  # packed documents: one flattened row, restarted at every document
            if cache is not None and cache.get_plan_state(0) is not None:  # a filled cache, not a fresh one
                raise ValueError(
                    "The inputs pack several documents (position_ids / cu_seq_lens / seq_idx), which cannot continue "
                    "a cache; pass one document per row to decode."
                )
            use_cache, cache = False, None
            attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        # As transformers' models: the embeddings, every block's output, the last one after the final norm. These are
        # the tensors the next layer reads, so `hidden_states[i].retain_grad()` sees the gradient.
        hidden_states = inputs_embeds
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for block in self.layers:
            if cu_seqlens is None:
                hidden_states = block(hidden_states, attention_mask, cache, memory_trace)
            else:  # the packed documents of the batch run as one row
                flat = block(hidden_states.flatten(0, 1)[None], attention_mask, None, memory_trace, cu_seqlens)
                hidden_states = flat.view(hidden_states.shape[:2] + flat.shape[-1:])
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm_f(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, cache=cache if use_cache else None, hidden_states=all_hidden_states
        )


class DLAForCausalLM(DLAPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: DLAConfig):
        super().__init__(config)
        self.model = DLAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.model.set_input_embeddings(new_embeddings)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # transformers would build a DynamicCache; DLA layers keep slots and plan states in a DLACache.
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = DLACache(self.config)
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self, input_ids, cache=None, attention_mask=None, inputs_embeds=None, is_first_iteration=False, **kwargs
    ):
        # `inputs_embeds` named here is what lets `generate(inputs_embeds=...)` through (it inspects the signature).
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if cache is not None and not is_first_iteration:
            model_inputs["attention_mask"] = None  # generated tokens are never padding
        return model_inputs

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DLACache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        memory_trace: list | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        position_ids, and the keyword arguments `cu_seq_lens_q` / `cu_seq_lens_k` / `seq_idx`: packed documents,
        see [`DLAModel.forward`]; TRL's padding-free collator passes them.
        """
        packing = {name: kwargs[name] for name in ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx") if name in kwargs}
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            memory_trace=memory_trace,
            position_ids=position_ids,
            return_dict=True,
            **packing,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        # Logits in the model's dtype (no B x T x vocab float32 copy under bf16); the loss upcasts them to float32.
        logits = self.lm_head(hidden_states[:, keep].to(self.lm_head.weight.dtype))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )

    @torch.no_grad()
    def memory_report(self, input_ids: torch.LongTensor, plot_path: str | None = None) -> DLAMemoryReport:
        """Per layer, the memory slots that `memory="dla"` built over one sequence (`input_ids` of shape (T,) or
        (1, T)): boundaries, token counts, information and density, plus drift and merge events per token.
        With `plot_path`, also draw them into a PNG."""
        if self.config.memory != "dla":
            raise ValueError(
                f"memory_report shows dynamic slots; this model has memory={self.config.memory!r} "
                "(fixed slots). Build it with DLAConfig(memory='dla')."
            )
        if input_ids.numel() == 0:
            raise ValueError(
                f"memory_report needs a sequence of at least one token; got input_ids of shape {tuple(input_ids.shape)}."
            )
        input_ids = input_ids.reshape(1, -1) if input_ids.ndim == 1 else input_ids
        if input_ids.shape[0] != 1:
            raise ValueError(f"memory_report takes one sequence, got a batch of {input_ids.shape[0]}.")
        records: list[dict] = []
        self.model(input_ids=input_ids.to(self.device), use_cache=False, memory_trace=records)
        layers = []
        for record in records:
            state, trace = record["state"], record["trace"]
            live = int(state.count[0])
            starts = state.start[0, :live].flip(0).tolist()  # oldest first
            ends = [s - 1 for s in starts[1:]] + [input_ids.shape[1] - 1]
            tokens = state.tokens[0, :live].flip(0).tolist()
            info = state.information[0, :live].flip(0).tolist()
            layers.append(
                {
                    "layer": record["layer"],
                    "slots": [
                        {"start": s, "end": e, "tokens": n, "information": u, "density": u / max(n, 1.0)}
                        for s, e, n, u in zip(starts, ends, tokens, info)
                    ],
                    "drift": trace["drift"][0].tolist(),
                    "opened": trace["opened"][0].tolist(),
                    "merged": trace["merged"][0].tolist(),
                }
            )
        report = DLAMemoryReport(tokens=input_ids[0].tolist(), layers=layers)
        if plot_path is not None:
            report.plot(plot_path)
        return report


__all__ = [
    "DLACache",
    "DLACacheLayer",
    "DLAForCausalLM",
    "DLAMemoryReport",
    "DLAModel",
    "DLAPreTrainedModel",
    "get_multistate_op",
]
