"""Bad input to the Triton ops is a clear error (or, for non-contiguous tensors, the same result), and
`DLAConfig(backend="triton")` selects these kernels in the model."""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

import hf_dla  # noqa: E402
from hf_dla.modeling_dla import get_multistate_op  # noqa: E402
from hf_dla.ops.chunk import chunk_gated_delta_rule  # noqa: E402
from hf_dla.ops.triton import chunk as triton_chunk  # noqa: E402
from hf_dla.ops.triton import triton_gated_delta_rule, triton_mamba2  # noqa: E402


def small_inputs(key_dim=16, value_dim=16, seq_len=20, heads=2, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    shape = (1, seq_len, heads)
    q = torch.randn(*shape, key_dim, generator=generator) * key_dim**-0.5
    k = torch.nn.functional.normalize(torch.randn(*shape, key_dim, generator=generator), dim=-1)
    v = torch.randn(*shape, value_dim, generator=generator)
    gates = [-torch.rand(*shape, generator=generator), torch.rand(*shape, generator=generator)]
    return [x.to(device) for x in (q, k, v, *gates)]


def test_dispatch_selects_the_triton_ops():
    assert get_multistate_op("triton", "mamba2") is triton_mamba2
    assert get_multistate_op("triton", "gated_deltanet") is triton_gated_delta_rule


def test_mixed_dtypes_are_rejected(device):
    q, k, v, log_decay, beta = small_inputs(device=device)
    with pytest.raises(ValueError, match="q, k, v in one floating dtype.*'q': torch.float64"):
        triton_mamba2(q.double(), k, v, log_decay, beta)
    with pytest.raises(ValueError, match="log_decay, beta, lam in that dtype or float32.*'beta': torch.float16"):
        triton_mamba2(q.bfloat16(), k.bfloat16(), v.bfloat16(), log_decay, beta.half())


def test_bfloat16_features_with_float32_gates_match_the_chunk_backend(device):
    """What the mixers pass in a bf16 model: bf16 q, k, v and a float32 log-decay."""
    q, k, v, log_decay, beta = small_inputs(device=device)
    inputs = [q.bfloat16(), k.bfloat16(), v.bfloat16(), log_decay, beta.bfloat16()]
    expected, _ = chunk_gated_delta_rule(*inputs, chunk_size=16)
    actual, _ = triton_gated_delta_rule(*inputs, chunk_size=16)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected)


def test_initial_state_must_be_float32(device):
    inputs = small_inputs(device=device)
    state = torch.zeros(1, 2, 1, 16, 16, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="initial_state must be float32"):
        triton_gated_delta_rule(*inputs, initial_state=state)


def test_unsupported_head_dim_points_to_the_chunk_backend(device):
    with pytest.raises(ValueError, match="head dims up to 128.*value dim 160.*backend='chunk'"):
        triton_mamba2(*small_inputs(value_dim=160, device=device))


def test_unsupported_chunk_size_is_rejected(device):
    with pytest.raises(ValueError, match=r"chunk_size in \(16, 32, 64\); got 8"):
        triton_mamba2(*small_inputs(device=device), chunk_size=8)


def test_cpu_tensors_without_the_interpreter_are_rejected(monkeypatch):
    monkeypatch.setattr(triton_chunk, "interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA tensors; got cpu.*backend='chunk'.*TRITON_INTERPRET=1"):
        triton_mamba2(*small_inputs())


def test_interpreter_switched_on_too_late_is_named(monkeypatch, device):
    """Kernels decorated for the interpreter but Triton's library (tl.sum, ...) not: a clear error."""
    if device.type != "cpu":
        pytest.skip("an interpreter-only failure mode")
    monkeypatch.setattr(triton_chunk.triton.language, "sum", object())
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 was set after triton was imported"):
        triton_mamba2(*small_inputs())


def test_non_contiguous_inputs_give_the_contiguous_result(device):
    q, k, v, log_decay, beta = small_inputs(device=device)
    # Same values, transposed storage: (B, H, T, D) tensors viewed as (B, T, H, D).
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
    assert not strided[0].is_contiguous()
    expected, _ = triton_gated_delta_rule(q, k, v, log_decay, beta, chunk_size=16)
    actual, _ = triton_gated_delta_rule(*strided, log_decay, beta, chunk_size=16)
    torch.testing.assert_close(actual, expected)


def tiny_model(backend, mixer):
    config = hf_dla.DLAConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=32, state_size=16,
        intermediate_size=64, mixer=mixer, memory="dla", max_states=4, merge_threshold=0.6,
        chunk_size=16, backend=backend, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return hf_dla.DLAForCausalLM(config)


@pytest.mark.parametrize("mixer", ["gated_deltanet", pytest.param("mamba2", marks=pytest.mark.slow)])
def test_model_with_triton_backend_matches_chunk_backend(mixer, device):
    """Same weights: logits and the loss gradient of every parameter agree with backend='chunk'."""
    input_ids = torch.randint(3, 64, (1, 24), generator=torch.Generator().manual_seed(0)).to(device)
    results = []
    for backend in ("chunk", "triton"):
        model = tiny_model(backend, mixer).to(device)
        assert model.model.layers[0].mixer.op is get_multistate_op(backend, mixer)
        out = model(input_ids, labels=input_ids)
        out.loss.backward()
        results.append((out.logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (chunk_logits, chunk_grads), (triton_logits, triton_grads) = results
    torch.testing.assert_close(triton_logits, chunk_logits, atol=1e-4, rtol=1e-4)
    assert chunk_grads.keys() == triton_grads.keys()
    for name, grad in chunk_grads.items():
        torch.testing.assert_close(triton_grads[name], grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_chunk_and_triton_agree_on_a_long_padded_sequence(device):
    """A sequence that is not a multiple of the chunk, every slot argument given (forward only)."""
    q, k, v, log_decay, beta = small_inputs(seq_len=70, device=device)
    slot_map = torch.randint(0, 3, (1, 70, 3), generator=torch.Generator().manual_seed(1)).to(device)
    lam = torch.rand(1, 70, 2, 3, generator=torch.Generator().manual_seed(2)).to(device)
    expected, expected_state = chunk_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, chunk_size=32)
    actual, state = triton_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, chunk_size=32)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, expected_state, atol=1e-4, rtol=1e-4)
