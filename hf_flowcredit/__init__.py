"""hf_flowcredit: FlowTracer token credit for TRL GRPO.

Answer-targeted attention flow through a completion's tokens, turned into per-token advantage weights.
The core library (`_CORE_EXPORTS`) works on any Hugging Face causal LM and does not import TRL.
"""

# Every name is imported from its module on first use: `import hf_flowcredit` (and so the `flowcredit-intervention`
# command, whose module lives in this package) loads neither torch nor transformers until something needs them.
# --- core library: answer spans, attention capture, flow throughput, token scorers, visualisation (no TRL) ---
_CORE_EXPORTS = {
    "answer_token_mask": "answer",
    "find_answer_span": "answer",
    "capture_attention": "attention",
    "resolve_layers": "attention",
    "flow_throughput": "flow",
    "flow_throughput_blockwise": "flow",
    "flow_throughput_dense": "flow",
    "SCORERS": "scoring",
    "ScoringBatch": "scoring",
    "TokenScorer": "scoring",
    "get_scorer": "scoring",
    "register_scorer": "scoring",
    "select_weights": "scoring",
    "render_html": "viz",
    "render_png": "viz",
    "token_strings": "viz",
}
# --- TRL trainer and intervention analysis ---
_LAZY_EXPORTS = {
    **_CORE_EXPORTS,
    "FlowGRPOConfig": "config",
    "FlowGRPOTrainer": "grpo_trainer",
    "intervention_analysis": "intervention",
}
__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
