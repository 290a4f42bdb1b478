"""capture_attention against eager `output_attentions=True` on tiny Qwen3, Llama and GPT-2 models."""

import pytest
import torch

from hf_flowcredit.attention import CAPTURE_ATTN_IMPLEMENTATION, capture_attention, resolve_layers
from kit.tiny import build_tokenizer, tiny_causal_lm


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _padded_batch(vocab_size, seed=0):
    """Three rows of 14 tokens: unpadded, left-padded by 4, right-padded by 5."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (3, 14), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    attention_mask[2, 9:] = 0
    return input_ids, attention_mask


def _eager_reference(model, input_ids, attention_mask, layers):
    with torch.no_grad():
        attentions = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    return torch.stack([attentions[layer].float().mean(dim=1) for layer in layers]).mean(dim=0)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "gpt2"])
@pytest.mark.parametrize("layers", [[1, 2], "middle", "all"])
def test_matches_eager_output_attentions_on_padded_batches(tokenizer, arch, layers):
    model = tiny_causal_lm(arch, tokenizer, hidden_size=64, num_layers=4, seed=0, attn_implementation="eager").eval()
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    captured = capture_attention(model, input_ids, attention_mask, layers=layers)
    assert model.config._attn_implementation == "eager"  # switched back after the capturing forward
    reference = _eager_reference(model, input_ids, attention_mask, resolve_layers(layers, 4))
    real = attention_mask.bool()
    torch.testing.assert_close(captured[real], reference[real], atol=2e-7, rtol=1e-5)
    assert (captured[~real] == 0).all()  # padding queries get no attention rows
    torch.testing.assert_close(captured[real].sum(-1), torch.ones(int(real.sum())))


@pytest.mark.parametrize("loaded_with", ["sdpa", "eager"])
def test_restores_the_attention_implementation_even_when_the_forward_fails(tokenizer, loaded_with):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2, attn_implementation=loaded_with)
    with pytest.raises(IndexError):
        capture_attention(model, torch.tensor([[1, 2, 10**6]]), layers="all")
    assert model.config._attn_implementation == loaded_with
    assert model.model.config._attn_implementation == loaded_with


def test_layers_after_the_last_selected_one_are_not_computed(tokenizer):
    model = tiny_causal_lm("llama", tokenizer, hidden_size=64, num_layers=4)
    calls = {}
    for index, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda *args, index=index: calls.__setitem__(index, calls.get(index, 0) + 1))
    model.lm_head.register_forward_hook(lambda *args: calls.__setitem__("lm_head", 1))
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    capture_attention(model, input_ids, attention_mask, layers=[0, 1])
    assert calls == {0: 1}  # layer 1 stops the forward inside its attention: its hook never fires, nor later ones


def test_query_chunking_does_not_change_the_result(tokenizer):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=3)
    input_ids, attention_mask = _padded_batch(len(tokenizer), seed=2)
    whole = capture_attention(model, input_ids, attention_mask, layers="all")
    for chunk in (1, 5):
        chunked = capture_attention(model, input_ids, attention_mask, layers="all", query_chunk_size=chunk)
        torch.testing.assert_close(chunked, whole, atol=1e-7, rtol=1e-6)


def test_probabilities_exist_one_query_chunk_at_a_time(tokenizer, monkeypatch):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=3)
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    sizes, softmax = [], torch.softmax
    monkeypatch.setattr(
        torch, "softmax", lambda scores, dim, **kw: sizes.append(scores.numel()) or softmax(scores, dim, **kw)
    )
    capture_attention(model, input_ids, attention_mask, layers="all", query_chunk_size=4)
    batch, length, heads = 3, 14, 4
    assert len(sizes) == 3 * 4  # 3 layers x ceil(14 / 4) chunks
    assert max(sizes) <= batch * heads * 4 * length  # never B x H x T x T (a chunk reads the keys up to its end)


def test_dropout_is_off_and_training_mode_comes_back(tokenizer):
    model = tiny_causal_lm("gpt2", tokenizer, hidden_size=64, num_layers=2).train()  # GPT-2 has attention dropout
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    first = capture_attention(model, input_ids, attention_mask, layers="all")
    second = capture_attention(model, input_ids, attention_mask, layers="all")
    assert model.training
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_layer_presets():
    assert resolve_layers("middle", 36) == [12, 15, 18, 20, 23]
    assert resolve_layers("early", 36) == [0, 3, 6, 8, 11]
    assert resolve_layers("late", 36) == [24, 27, 30, 32, 35]
    assert resolve_layers("middle", 4) == [1, 2]
    assert resolve_layers("middle", 1) == [0]
    assert resolve_layers("all", 3) == [0, 1, 2]
    assert resolve_layers([3, -1, 0], 4) == [0, 3]
    assert resolve_layers(2, 4) == [2]


@pytest.mark.parametrize("layers, match", [("center", "Unknown layers"), ([4], "out of range"), ([], "non-empty")])
def test_bad_layers_get_a_clear_error(layers, match):
    with pytest.raises(ValueError, match=match):
        resolve_layers(layers, 4)


def test_bad_input_gets_a_clear_error(tokenizer):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        capture_attention(model, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="must match"):
        capture_attention(model, torch.tensor([[1, 2, 3]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="query_chunk_size"):
        capture_attention(model, torch.tensor([[1, 2, 3]]), query_chunk_size=0)


def test_the_capturing_implementation_refuses_to_run_outside_a_capture(tokenizer):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2)
    model.set_attn_implementation(CAPTURE_ATTN_IMPLEMENTATION)
    with pytest.raises(RuntimeError, match="only usable inside `capture_attention`"):
        model(input_ids=torch.tensor([[1, 2, 3]]))
