"""The O(T) flow path: attention rows recomputed from captured queries and keys equal `capture_attention`, flow
scores from them equal the dense path's, on every architecture capture supports, with padding and sliding windows;
and `normalize_weights`."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from hf_flowcredit import FlowGRPOConfig
from hf_flowcredit.attention import capture_attention, capture_queries_keys
from hf_flowcredit.flow import flow_throughput_blockwise, flow_throughput_dense
from hf_flowcredit.scoring import FlowScorer, ScoringBatch, normalize_weights, select_weights
from kit.tiny import build_tokenizer, tiny_causal_lm

TOKENIZER = build_tokenizer()
LENGTH = 14


def _padded_batch(seed=0):
    """Four rows of 14 tokens: unpadded, left-padded by 4, right-padded by 5, left- and right-padded."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(TOKENIZER), (4, LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    attention_mask[2, 9:] = 0
    attention_mask[3, :2] = attention_mask[3, 12:] = 0
    return input_ids, attention_mask


def _sliding_window_qwen3():
    """Layer 0 full attention, layers 1-2 a 4-token sliding window (shorter than the sequence)."""
    config = Qwen3Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=len(TOKENIZER), use_sliding_window=True, sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _model(arch, dtype=torch.float32):
    if arch == "qwen3-sliding":
        model = _sliding_window_qwen3()
    else:
        model = tiny_causal_lm(arch, TOKENIZER, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, seed=0)
    return model.to(dtype)


ARCHS = ["qwen3", "llama", "gpt2", "qwen3-sliding"]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("arch", ARCHS)
def test_recomputed_rows_equal_captured_attention(arch, dtype, tolerance):
    model = _model(arch, dtype)
    input_ids, attention_mask = _padded_batch()
    for mask in (None, attention_mask):
        dense = capture_attention(model, input_ids, mask, layers="all")
        lazy = capture_queries_keys(model, input_ids, mask, layers="all")
        assert dense.dtype == dtype and lazy.dtype == dtype
        torch.testing.assert_close(lazy.dense(), dense, atol=tolerance, rtol=0)
        rows = lazy(5, 11)  # any block: [B, 6, 11], the causal part only
        assert rows.shape == (4, 6, 11)
        torch.testing.assert_close(rows, dense[:, 5:11, :11], atol=tolerance, rtol=0)
        assert dense[:, 5:11, 11:].abs().max() == 0  # nothing was left out


def test_sliding_window_is_applied_by_both_paths():
    input_ids, _ = _padded_batch()
    model = _sliding_window_qwen3()
    for capture in (capture_attention, lambda *a, **k: capture_queries_keys(*a, **k).dense()):
        windowed = capture(model, input_ids, layers=[1])
        assert windowed[:, 10, :7].abs().max() == 0 and (windowed[:, 10, 7:11] > 0).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("arch", ARCHS)
def test_flow_from_queries_and_keys_equals_the_dense_path(arch, dtype, tolerance):
    model = _model(arch, dtype)
    input_ids, attention_mask = _padded_batch(seed=1)
    real = attention_mask.bool()
    positions = real.long().cumsum(-1)
    source_mask = real & (positions <= 4)
    sink_mask = real & (positions > positions.max(-1, keepdim=True).values - 2)
    dense = flow_throughput_dense(
        capture_attention(model, input_ids, attention_mask, layers="middle"), source_mask, sink_mask,
        attention_mask=attention_mask,
    )  # fmt: skip
    lazy = flow_throughput_blockwise(
        capture_queries_keys(model, input_ids, attention_mask, layers="middle"), source_mask, sink_mask,
        attention_mask=attention_mask, block_size=3,
    )  # fmt: skip
    assert dense.dtype == lazy.dtype == dtype and (dense[real] > 0).any()
    torch.testing.assert_close(lazy, dense, atol=tolerance, rtol=tolerance)


def test_flow_scorer_picks_the_query_key_path_by_length_with_the_same_scores(monkeypatch):
    model = _model("qwen3")
    input_ids, attention_mask = _padded_batch(seed=2)
    real = attention_mask.bool()
    prompt_mask = real & (real.long().cumsum(-1) <= 5)
    completion_mask = real & ~prompt_mask
    answer_mask = completion_mask & (real.long().cumsum(-1) > real.sum(-1, keepdim=True) - 2)
    batch = ScoringBatch(input_ids, attention_mask, prompt_mask, completion_mask, answer_mask)
    calls = []
    import hf_flowcredit.scoring as scoring

    for name in ("capture_attention", "capture_queries_keys"):
        original = getattr(scoring, name)
        monkeypatch.setattr(scoring, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    dense = FlowScorer(recompute_min_length=None)(model, batch)
    assert set(calls) == {"capture_attention"}
    calls.clear()
    lazy = FlowScorer(recompute_min_length=LENGTH)(model, batch)
    assert set(calls) == {"capture_queries_keys"}
    assert (dense[completion_mask] > 0).any()
    torch.testing.assert_close(lazy, dense, atol=1e-5, rtol=1e-5)


def test_only_queries_and_keys_are_kept():
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2)
    input_ids, attention_mask = _padded_batch()
    lazy = capture_queries_keys(model, input_ids, attention_mask, layers=[0, 2])
    batch, length, head_dim = 4, LENGTH, 16
    kept = sum(layer.query.numel() + layer.key.numel() for layer in lazy.layers)
    assert kept == 2 * batch * length * head_dim * (4 + 2)  # two layers: 4 query heads, 2 key heads, no T x T


def test_without_stop_early_every_layer_runs_and_the_result_is_the_same():
    model = tiny_causal_lm("llama", TOKENIZER, hidden_size=64, num_layers=4)
    calls = []
    for index, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda *args, index=index: calls.append(index))
    logits_rows = []
    model.lm_head.register_forward_hook(lambda module, args, output: logits_rows.append(output.shape[1]))
    input_ids, attention_mask = _padded_batch()
    stopped = capture_attention(model, input_ids, attention_mask, layers=[1])
    assert calls == [0] and logits_rows == []
    calls.clear()
    full = capture_attention(model, input_ids, attention_mask, layers=[1], stop_early=False)
    assert calls == [0, 1, 2, 3] and logits_rows == [1]  # all layers, the LM head on the last position only
    torch.testing.assert_close(full, stopped, atol=0, rtol=0)


# normalize_weights ---------------------------------------------------------------------------------------------


def test_normalized_weights_have_mean_one_per_completion_and_keep_the_ranking():
    generator = torch.Generator().manual_seed(0)
    completion_mask = torch.ones(5, 20, dtype=torch.bool)
    completion_mask[1, 13:] = False
    completion_mask[2, :] = False  # no tokens: stays all zero
    completion_mask[3, 1:] = False
    scores = torch.rand(5, 20, generator=generator)
    scores[4] = 0.5  # no signal: all 1.0 already
    weights = select_weights(scores, completion_mask)
    assert weights.sum() / completion_mask.sum() > 1.1  # the paper's rule: mean 1.2 on long completions
    normalized = normalize_weights(weights, completion_mask)
    counts = completion_mask.sum(-1)
    means = normalized.sum(-1)[counts > 0] / counts[counts > 0]
    torch.testing.assert_close(means, torch.ones_like(means), atol=1e-6, rtol=0)
    assert (normalized[~completion_mask] == 0).all()
    ratio = normalized[0] / weights[0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # one factor per completion: the ranking is kept
    torch.testing.assert_close(normalized[4], torch.ones(20))


def test_normalize_weights_is_off_by_default():
    args = FlowGRPOConfig(output_dir="unused", report_to="none", use_cpu=True)
    assert args.normalize_weights is False and args.flow_recompute_min_length == 2048
    with pytest.raises(ValueError, match="flow_recompute_min_length"):
        FlowGRPOConfig(output_dir="unused", report_to="none", use_cpu=True, flow_recompute_min_length=0)
