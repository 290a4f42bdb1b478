"""Configuration of Dynamic Linear Attention (DLA) language models."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .memory_plans import MEMORY_PLANS
from .ops_utils import BACKENDS

MIXERS = ("mamba2", "gated_deltanet")
# initializer_range of each backbone's reference implementation: transformers' Mamba2Config (0.1); Qwen3-Next's and
# fla's Gated DeltaNet configs (0.02).
REFERENCE_INITIALIZER_RANGE = {"mamba2": 0.1, "gated_deltanet": 0.02}


@strict
class DLAConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DLAModel`] / [`DLAForCausalLM`]: a stack of Mamba-2 or Gated DeltaNet mixers whose
    recurrent state is split into memory slots (vanilla, Log-Linear Fenwick levels, or Dynamic Linear Attention).

    mixer (`str`, defaults to `"mamba2"`):
        `"mamba2"` (blocks: norm, mixer; no MLP) or `"gated_deltanet"` (blocks: norm, mixer, norm, SwiGLU MLP).
    memory (`str`, defaults to `"dla"`):
        `"vanilla"` (one state: the backbone), `"loglinear"` (Fenwick levels, `max_states` levels hold
        `2 ** (max_states - 1)` tokens) or `"dla"` (dynamic merging, at most `max_states` slots).
    max_states (`int`, defaults to 16):
        Number of memory slots (lambda indices) for `loglinear` and `dla`; at least 2 (ignored by `vanilla`).
    read_weights_init_std (`float`, defaults to 0.0):
        Spread of the read-weight logits `W x` at initialisation, the same at any width:
        `W ~ N(0, read_weights_init_std / sqrt(hidden_size))`. 0 starts every lambda at exactly 1, so a fresh (or converted) model is its
        backbone; a small spread (e.g. 0.16) can help multi-state models trained from scratch.
    merge_threshold (`float`, defaults to 0.5):
        DLA opens a new slot when the drift `1 - cos(key, newest slot summary)` exceeds it; in `[0, 2)`.
    backend (`str`, defaults to `"chunk"`):
        `"naive"` (per-token recurrence), `"chunk"` (chunked PyTorch, the CPU training path) or `"triton"`.
        Decoding one token at a time always uses the naive step.
    chunk_size (`int`, defaults to 64):
        Chunk length of the `chunk` and `triton` backends.
    num_heads, head_dim, state_size:
        Heads, value dim per head (Mamba-2 `head_dim`) and key/query dim per head (Mamba-2 `state_size`).
        `num_heads * head_dim` must equal `expand * hidden_size`.
    n_groups (`int`, defaults to 1):
        Mamba-2 groups sharing B and C (keys and queries); must divide `num_heads`.
    intermediate_size (`int`, defaults to 2048):
        Width of the SwiGLU MLP of Gated DeltaNet blocks.
    initializer_range (`float`, *optional*):
        Std of the normal initialisation of the embeddings and linear layers. Unset, the backbone's reference:
        0.1 for `mamba2` (transformers' `Mamba2Config`), 0.02 for `gated_deltanet` (Qwen3-Next, fla); the config
        then holds the resolved value.
    rescale_prenorm_residual (`bool`, defaults to `False`):
        Mamba-2 only, as in transformers' `Mamba2Config`: divide each mixer's `out_proj` by sqrt(num_hidden_layers)
        at initialisation (GPT-2's scaled residual init).

    Example:

    ```python
    >>> import hf_dla
    >>> from transformers import AutoModelForCausalLM
    >>> config = hf_dla.DLAConfig(mixer="gated_deltanet", memory="dla", max_states=8, hidden_size=128,
    ...                           num_hidden_layers=2, num_heads=4, head_dim=64, state_size=32, vocab_size=1000)
    >>> model = AutoModelForCausalLM.from_config(config)
    ```
    """

    model_type = "dla"

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 24
    mixer: str = "mamba2"
    memory: str = "dla"
    max_states: int = 16
    merge_threshold: float = 0.5
    read_weights_init_std: float = 0.0
    backend: str = "chunk"
    chunk_size: int = 64
    num_heads: int = 24
    head_dim: int = 64
    state_size: int = 64
    expand: int = 2
    n_groups: int = 1
    intermediate_size: int = 2048
    conv_kernel: int = 4
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    initializer_range: float | None = None
    rescale_prenorm_residual: bool = False
    residual_in_fp32: bool = True
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: list[float] | tuple[float, ...] = (0.0, float("inf"))
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.initializer_range is None:  # the backbone's reference (an unknown mixer is refused just after)
            self.initializer_range = REFERENCE_INITIALIZER_RANGE.get(self.mixer, 0.02)
        super().__post_init__(**kwargs)

    @property
    def num_slots(self) -> int:
        """Memory slots per layer: 1 for the vanilla backbone, else `max_states`."""
        return 1 if self.memory == "vanilla" else self.max_states

    def validate_architecture(self):
        """Reject settings the model cannot build or train, naming the field and the fix (runs at construction,
        so also when `from_pretrained` reads a config)."""
        for field, value, choices in (
            ("mixer", self.mixer, MIXERS),
            ("memory", self.memory, tuple(MEMORY_PLANS)),
            ("backend", self.backend, BACKENDS),
        ):
            if value not in choices:
                raise ValueError(f"DLAConfig.{field}={value!r} is unknown; choose one of {choices}.")
        for field, minimum in POSITIVE_INTEGERS.items():
            _check_integer(field, getattr(self, field), minimum)
        if self.memory != "vanilla" and self.max_states < 2:
            raise ValueError(
                f"DLAConfig.max_states={self.max_states} must be at least 2 (multi-state memory); "
                "use memory='vanilla' for a single state."
            )
        for field in (
            "merge_threshold",
            "read_weights_init_std",
            "rms_norm_eps",
            "initializer_range",
            *TIME_STEP_FIELDS,
        ):
            _check_real(field, getattr(self, field))
        if not 0.0 <= self.merge_threshold < 2.0:
            raise ValueError(
                f"DLAConfig.merge_threshold={self.merge_threshold} must lie in [0, 2) (the range of 1 - cos)."
            )
        if not self.rms_norm_eps > 0:
            raise ValueError(
                f"DLAConfig.rms_norm_eps={self.rms_norm_eps} must be positive (it keeps 1/sqrt(mean x^2 + eps) "
                "finite); the usual value is 1e-5 or 1e-6."
            )
        for field in ("initializer_range", "read_weights_init_std"):
            if getattr(self, field) < 0:
                raise ValueError(f"DLAConfig.{field}={getattr(self, field)} is a std: use a value >= 0.")
        self._validate_time_steps()
        if self.num_heads * self.head_dim != self.expand * self.hidden_size:
            raise ValueError(
                f"DLAConfig: num_heads * head_dim = {self.num_heads} * {self.head_dim} must equal "
                f"expand * hidden_size = {self.expand} * {self.hidden_size}; set head_dim = "
                f"{self.expand * self.hidden_size / self.num_heads:g} or change num_heads / expand."
            )
        if self.num_heads % self.n_groups:
            raise ValueError(f"DLAConfig.n_groups={self.n_groups} must divide num_heads={self.num_heads}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"DLAConfig.hidden_act={self.hidden_act!r} is not an activation transformers knows; use one of "
                "transformers.activations.ACT2FN's keys, e.g. 'silu'."
            )
        for field in ("residual_in_fp32", "rescale_prenorm_residual", "use_cache", "tie_word_embeddings"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"DLAConfig.{field}={getattr(self, field)!r} must be True or False.")

    def _validate_time_steps(self):
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(
                f"DLAConfig: time_step_min={self.time_step_min} and time_step_max={self.time_step_max} must satisfy "
                "0 < time_step_min <= time_step_max (the range the initial dt is drawn from); swap or fix them."
            )
        if self.time_step_floor < 0:
            raise ValueError(f"DLAConfig.time_step_floor={self.time_step_floor} must be >= 0 (a lower bound on dt).")
        limit = self.time_step_limit
        if (
            not isinstance(limit, (list, tuple))
            or len(limit) != 2
            or not all(_is_real(x) for x in limit)
            or not 0 <= limit[0] <= limit[1]
        ):
            raise ValueError(
                f"DLAConfig.time_step_limit={limit!r} must be two numbers (low, high) with 0 <= low <= high, the "
                "clamp of dt; (0.0, float('inf')) means no clamp."
            )


# Integer fields and their minimum (max_states: at least 2 unless memory='vanilla', checked after).
POSITIVE_INTEGERS = {
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "max_states": 1,
    "chunk_size": 1,
    "num_heads": 1,
    "head_dim": 1,
    "state_size": 1,
    "expand": 1,
    "n_groups": 1,
    "intermediate_size": 1,
    "conv_kernel": 1,
}
TIME_STEP_FIELDS = ("time_step_min", "time_step_max", "time_step_floor")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _check_integer(field: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = f"; pass {field}={int(value)}" if _is_real(value) and float(value).is_integer() else ""
        raise ValueError(f"DLAConfig.{field}={value!r} must be an integer (got {type(value).__name__}){hint}.")
    if value < minimum:
        raise ValueError(f"DLAConfig.{field}={value} must be at least {minimum}.")


def _check_real(field: str, value) -> None:
    if not _is_real(value):
        raise ValueError(f"DLAConfig.{field}={value!r} must be a real number (int or float, not NaN).")


__all__ = ["DLAConfig"]
