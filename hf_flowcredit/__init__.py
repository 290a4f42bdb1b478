"""hf_flowcredit: FlowTracer token credit for TRL GRPO.

Answer-targeted attention flow through a completion's tokens, turned into per-token advantage weights.
The core library (this block) works on any Hugging Face causal LM and does not import TRL.
"""

# --- core library: answer spans, attention capture, flow throughput, token scorers, visualisation ---
from .answer import answer_token_mask, find_answer_span
from .attention import capture_attention, resolve_layers
from .flow import flow_throughput, flow_throughput_blockwise, flow_throughput_dense
from .scoring import SCORERS, ScoringBatch, TokenScorer, get_scorer, register_scorer, select_weights
from .viz import render_html, render_png, token_strings

__all__ = [
    "SCORERS",
    "ScoringBatch",
    "TokenScorer",
    "answer_token_mask",
    "capture_attention",
    "find_answer_span",
    "flow_throughput",
    "flow_throughput_blockwise",
    "flow_throughput_dense",
    "get_scorer",
    "register_scorer",
    "render_html",
    "render_png",
    "resolve_layers",
    "select_weights",
    "token_strings",
]
# --- end of core library block ---

# --- TRL trainer and intervention analysis: imported on first use, so the core above stays free of TRL ---
_LAZY_EXPORTS = {
    "FlowGRPOConfig": "config",
    "FlowGRPOTrainer": "grpo_trainer",
    "intervention_analysis": "intervention",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
