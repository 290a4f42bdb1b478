"""Configuration of the FlowTracer GRPO trainer: TRL's `GRPOConfig` plus the token-credit fields."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .answer import find_answer_span
from .attention import LAYER_PRESETS
from .scoring import SCORERS, config_options

# The registered scorers (hf_flowcredit.scoring: each scorer class declares itself) and "none", plain GRPO.
TOKEN_SCORERS = (*SCORERS, "none")
MISSING_ANSWER_POLICIES = ("uniform", "last_tokens")
WEIGHT_SIGNS = ("all", "positive")

logger = logging.getLogger(__name__)


@dataclass
class FlowGRPOConfig(GRPOConfig):
    r"""
        Configuration class for the [`FlowGRPOTrainer`].

        Everything of [`~trl.GRPOConfig`], plus the fields below. After TRL has sampled and scored the completions, a
        token scorer ranks the completion tokens; the top `top_fraction` of each completion get weight `high_weight`, the
        others 1.0, and the weights multiply the per-token advantage. With `token_scorer="none"` or `high_weight=1.0`
        training is exactly TRL's GRPO.

        Parameters:
            token_scorer (`str`, *optional*, defaults to `"flow"`):
                How completion tokens are ranked: `"none"` (plain GRPO) or a scorer registered in
                `hf_flowcredit.scoring.SCORERS`:
    {token_scorers}
            top_fraction (`float`, *optional*, defaults to `0.4`):
                Fraction of each completion's tokens that get the high weight.
            high_weight (`float`, *optional*, defaults to `1.5`):
                Advantage multiplier of the selected tokens; the others keep 1.0.
            flow_layers (`str`, *optional*, defaults to `"middle"`):
                Which layers' attention the flow and attention scorers read: `"middle"` (up to 5 evenly spaced layers of
                the middle third; `"early"` and `"late"` take the first and last third), `"all"`, or a comma-separated
                list of layer indices such as `"8,10,12"` (negative ones count from the end). Checked against the model
                when the trainer is built, with one tiny attention capture that proves the model's attention can be read.
            answer_format (`str`, *optional*, defaults to `"auto"`):
                How the answer span (the flow sinks) is found in a completion: `"auto"` takes the last of `\boxed{}`,
                `<answer></answer>`, `#### x` and `The answer is x`; one of `"boxed"`, `"answer_tag"`, `"hash"`,
                `"answer_is"` restricts the search; `"regex:<pattern>"` uses a regular expression (its first group, else
                the whole match, is the answer).
            missing_answer (`str`, *optional*, defaults to `"uniform"`):
                What a completion with no answer span gets: `"uniform"` (all weights 1.0, i.e. plain GRPO for that
                row) or `"last_tokens"` (its last `answer_fallback_tokens` tokens are treated as the answer span).
            answer_fallback_tokens (`int`, *optional*, defaults to `8`):
                Length of the fallback answer span used by `missing_answer="last_tokens"`.
            weight_sign (`str`, *optional*, defaults to `"all"`):
                `"all"` weights tokens of positive and negative advantage completions alike; `"positive"` weights only
                completions whose advantage is positive (the others keep 1.0).
            flow_max_length (`int` or `None`, *optional*, defaults to `None`):
                Completions whose prompt + completion is longer than this many tokens are not scored (weights 1.0) to
                bound the cost of the extra forward; they are counted in the `flow/too_long_frac` metric. `None`: no
                limit.
            flow_recompute_min_length (`int` or `None`, *optional*, defaults to `2048`):
                Sequences (prompt + completion) at least this long are scored without ever building the `T x T`
                attention: the scoring forward keeps the selected layers' queries and keys and the flow solver
                recomputes attention rows from them block by block (O(T * d) memory instead of 4 T^2 bytes per row; same
                scores; on a CPU as fast as the dense path from about 2K tokens). `None`: always the dense path.
            normalize_weights (`bool`, *optional*, defaults to `False`):
                Rescale each completion's token weights so that their mean over its tokens is 1. The paper's rule (top
                40% x1.5, the rest 1.0) raises the mean weight to 1.2, i.e. a 20% larger effective learning rate; with
                this option only the relative credit between tokens changes. Default off: the paper's rule.

        Defaults that follow the device (TRL's are for GPUs):
            bf16 (`bool`, *optional*):
                Not set: `True` (TRL's default) on a machine with an accelerator; `False` when training runs on the CPU
                (`use_cpu=True`, or no accelerator found), where bf16 autocast makes every step several times slower. A
                value given explicitly is kept.
            gradient_checkpointing (`bool`, *optional*):
                Not set: `True` (TRL's default) with an accelerator, `False` on the CPU, where memory is rarely the limit
                and recomputing activations costs time. Sets `activation_checkpointing`, the transformers 5 name, unless
                that is given. A value given explicitly (either name) is kept.
    """

    # TRL's bf16 and gradient_checkpointing, unset by default here: resolved for the device in `__post_init__`.
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 (mixed) precision. Not set: on with an accelerator (TRL's default), off on the CPU "
            "(use_cpu=True or no accelerator), where it slows training down."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated name of activation_checkpointing. Neither set: on with an accelerator (TRL's "
            "default), off on the CPU."
        },
    )
    token_scorer: str = field(
        default="flow",
        metadata={
            "help": "How completion tokens are ranked: 'none' (plain GRPO) or a registered scorer ("
            + "; ".join(f"'{name}': {scorer.summary}" for name, scorer in SCORERS.items())
            + ").",
            "choices": list(TOKEN_SCORERS),
        },
    )
    top_fraction: float = field(
        default=0.4,
        metadata={"help": "Fraction of each completion's tokens that get the high weight (the paper uses 0.4)."},
    )
    high_weight: float = field(
        default=1.5,
        metadata={"help": "Advantage multiplier of the selected tokens; the others keep 1.0 (the paper uses 1.5)."},
    )
    flow_layers: str = field(
        default="middle",
        metadata={
            "help": "Layers whose attention the flow/attention scorers read: 'middle', 'early', 'late', 'all', or "
            "indices like '8,10,12'."
        },
    )
    answer_format: str = field(
        default="auto",
        metadata={
            "help": "How the answer span is found: 'auto', 'boxed', 'answer_tag', 'hash', 'answer_is' or "
            "'regex:<pattern>'."
        },
    )
    missing_answer: str = field(
        default="uniform",
        metadata={
            "help": "Completions without an answer span: 'uniform' (weights 1.0) or 'last_tokens' (the last "
            "`answer_fallback_tokens` tokens act as the answer).",
            "choices": list(MISSING_ANSWER_POLICIES),
        },
    )
    answer_fallback_tokens: int = field(
        default=8,
        metadata={"help": "Length of the fallback answer span used by missing_answer='last_tokens'."},
    )
    weight_sign: str = field(
        default="all",
        metadata={
            "help": "'all': weight tokens whatever the sign of the advantage; 'positive': only completions with a "
            "positive advantage.",
            "choices": list(WEIGHT_SIGNS),
        },
    )
    flow_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Sequences (prompt + completion) longer than this are not scored and keep weight 1.0; None: no "
            "limit."
        },
    )

    flow_recompute_min_length: int | None = field(
        default=2048,
        metadata={
            "help": "Sequences at least this long are scored from queries and keys, block by block, without the "
            "T x T attention matrix (same scores, O(T) memory); None: always the dense path."
        },
    )
    normalize_weights: bool = field(
        default=False,
        metadata={
            "help": "Rescale token weights so their mean over each completion is 1 (the paper's rule, top 40 percent "
            "x1.5, raises it to 1.2)."  # no percent sign: argparse formats help strings
        },
    )

    def scorer_options(self) -> dict:
        """The options of `token_scorer` that fields of this config set (e.g. `layers` from `flow_layers`)."""
        if self.token_scorer == "none":
            return {}
        values = {"flow_layers": parse_flow_layers(self.flow_layers)}  # fields that need parsing first
        return {
            option: values.get(name, getattr(self, name))
            for option, name in config_options(SCORERS[self.token_scorer]).items()
        }

    def _resolve_device_defaults(self) -> None:
        """bf16 and activation checkpointing the user left unset: TRL's GPU defaults with an accelerator, off on the CPU
        (measured on SmolLM2-135M, two GRPO steps: 19 min with both on, 2 min with both off)."""
        on_cpu = self.use_cpu or not torch.accelerator.is_available()
        changed = []
        if self.bf16 is None and not self.fp16 and on_cpu:
            self.bf16 = False
            changed.append("bf16=False")
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = not on_cpu  # the new name, so transformers does not warn about the old one
            if on_cpu:
                changed.append("activation_checkpointing=False")
        if changed:
            logger.info(
                "FlowGRPOConfig: training on the CPU, so %s (TRL's defaults are for GPUs); set them explicitly to override.",
                " and ".join(changed),
            )

    def __post_init__(self):
        self._resolve_device_defaults()
        super().__post_init__()
        _check_choice("token_scorer", self.token_scorer, (*SCORERS, "none"))  # scorers registered since import too
        _check_choice("missing_answer", self.missing_answer, MISSING_ANSWER_POLICIES)
        _check_choice("weight_sign", self.weight_sign, WEIGHT_SIGNS)
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}.")
        if not (math.isfinite(self.high_weight) and self.high_weight > 0.0):
            raise ValueError(
                f"high_weight must be a finite number > 0 (1.0 gives plain GRPO, the paper uses 1.5), got "
                f"{self.high_weight}: zero or a negative weight would cancel or flip the advantage of the selected "
                "tokens."
            )
        find_answer_span("", self.answer_format)  # an unknown name or an invalid regex raises here, not mid-run
        parse_flow_layers(self.flow_layers)
        if self.answer_fallback_tokens < 1:
            raise ValueError(f"answer_fallback_tokens must be >= 1, got {self.answer_fallback_tokens}.")
        if self.flow_max_length is not None and self.flow_max_length < 2:
            raise ValueError(f"flow_max_length must be None or >= 2, got {self.flow_max_length}.")
        if self.flow_recompute_min_length is not None and self.flow_recompute_min_length < 1:
            raise ValueError(f"flow_recompute_min_length must be None or >= 1, got {self.flow_recompute_min_length}.")


FlowGRPOConfig.__doc__ = FlowGRPOConfig.__doc__.replace(
    "{token_scorers}",
    "\n".join(f'            - `"{name}"`: {scorer.summary}.' for name, scorer in SCORERS.items()),
)


def parse_flow_layers(flow_layers: str) -> str | list[int]:
    """`flow_layers` as the scorers take it: a preset name, or the layer indices of a list such as `"8,10,12"`.

    Whether the indices exist depends on the model: `FlowGRPOTrainer` checks that when it is built.
    """
    text = flow_layers.strip()
    if text in LAYER_PRESETS:
        return text
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"-?\d+", part) for part in parts):
        raise ValueError(
            f"flow_layers={flow_layers!r} is not a layer selection; use one of {LAYER_PRESETS} or comma-separated "
            "layer indices such as '8,10,12' (negative indices count from the end)."
        )
    return [int(part) for part in parts]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}.")
