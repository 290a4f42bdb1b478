"""Triton kernels (CPU interpreter, or a GPU with TRITON_INTERPRET=0) against the naive per-token recurrence: outputs, final states, gradients.

Float32, atol = rtol = 1e-3, for both mixers and the three memory modes, slot maps produced by the real
memory plans. The default run keeps a representative set; the full grid is marked slow.
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

from hf_dla.memory_plans import build_memory_plan  # noqa: E402
from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2  # noqa: E402
from hf_dla.ops.triton import interpreter_active, triton_gated_delta_rule, triton_mamba2  # noqa: E402

OPS = {"mamba2": (naive_mamba2, triton_mamba2), "gated_deltanet": (naive_gated_delta_rule, triton_gated_delta_rule)}
INPUT_NAMES = ("q", "k", "v", "log_decay", "beta", "lam", "initial_state")


def make_case(mixer, memory, seq_len, key_dim, value_dim, device, batch=1, heads=2, seed=0):
    """Op inputs as the mixers produce them, and the slot map and trace of the memory plan over the keys."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, heads)
    q = torch.randn(*shape, key_dim, generator=generator)
    k = torch.randn(*shape, key_dim, generator=generator)
    if mixer == "gated_deltanet":
        q, k = F.normalize(q, dim=-1) * key_dim**-0.5, F.normalize(k, dim=-1)
    else:
        q, k = q * key_dim**-0.5, k * key_dim**-0.5
    v = torch.randn(*shape, value_dim, generator=generator)
    log_decay = -torch.rand(*shape, generator=generator)
    beta = torch.rand(*shape, generator=generator)
    num_slots = {"vanilla": 1, "loglinear": math.ceil(math.log2(seq_len)) + 1, "dla": 4}[memory]
    lam = torch.rand(*shape, num_slots, generator=generator) + 0.5
    initial_state = 0.5 * torch.randn(batch, heads, num_slots, key_dim, value_dim, generator=generator)
    inputs = [x.to(device) for x in (q, k, v, log_decay, beta, lam, initial_state)]
    plan = build_memory_plan(memory, num_slots, merge_threshold=0.6)
    valid = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    planned = plan(inputs[1], valid, plan.init_state(batch, heads * key_dim, device))
    return inputs, planned.slot_map, planned.trace


def merge_count(trace):
    """How many times the dla plan merged two slots (a merge of the oldest pair gives the same slot-map row as a
    plain ageing step, so the count comes from the plan's trace, not from the map)."""
    return 0 if trace is None else int((trace["merged"] >= 0).sum())


def outputs_and_grads(op, inputs, slot_map, **kwargs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, log_decay, beta, lam, initial_state = leaves
    out, final_state = op(q, k, v, log_decay, beta, slot_map, lam, initial_state, **kwargs)
    # Weights that differ per element, so that every gradient entry is checked.
    loss = (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum() + (final_state**2).sum()
    loss.backward()
    return {"o": out, "final_state": final_state, **{f"d{n}": x.grad for n, x in zip(INPUT_NAMES, leaves)}}


def assert_matches_naive(mixer, memory, seq_len, key_dim, value_dim, chunk_size, device, **case):
    inputs, slot_map, trace = make_case(mixer, memory, seq_len, key_dim, value_dim, device, **case)
    if memory == "dla":  # the plan must have merged, or the dla path is not exercised
        assert merge_count(trace) > 0
    naive, triton_op = OPS[mixer]
    expected = outputs_and_grads(naive, inputs, slot_map)
    actual = outputs_and_grads(triton_op, inputs, slot_map, chunk_size=chunk_size)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_kernels_are_built_for_the_test_device(device):
    assert interpreter_active() == (device.type == "cpu")


# Representative default set: each mixer once with merging slot maps, T not a multiple of the chunk.
@pytest.mark.parametrize(
    ("mixer", "memory", "seq_len", "key_dim", "value_dim", "chunk_size"),
    [
        ("mamba2", "loglinear", 40, 16, 16, 16),
        ("gated_deltanet", "dla", 40, 16, 32, 16),
        ("gated_deltanet", "vanilla", 40, 32, 16, 32),
    ],
)
def test_triton_matches_naive(mixer, memory, seq_len, key_dim, value_dim, chunk_size, device):
    assert_matches_naive(mixer, memory, seq_len, key_dim, value_dim, chunk_size, device)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
@pytest.mark.parametrize("memory", ["vanilla", "loglinear", "dla"])
@pytest.mark.parametrize(("seq_len", "key_dim", "value_dim", "chunk_size"), [(128, 32, 32, 64), (100, 16, 24, 16)])
def test_triton_matches_naive_full_grid(mixer, memory, seq_len, key_dim, value_dim, chunk_size, device):
    assert_matches_naive(mixer, memory, seq_len, key_dim, value_dim, chunk_size, device, batch=2)


@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
def test_defaults_without_slots_lambdas_or_state(mixer, device):
    """Vanilla backbone with every optional argument left out, default chunk size."""
    inputs, _, _ = make_case(mixer, "vanilla", 24, 16, 16, device)
    naive, triton_op = OPS[mixer]
    expected, _ = naive(*inputs[:5], output_final_state=False)
    actual, final_state = triton_op(*inputs[:5], output_final_state=False)
    assert final_state is None
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=1e-3)


def test_chunked_prefill_then_continue_equals_one_pass(device):
    """A final state handed back as the initial state continues the recurrence exactly (cache hand-off)."""
    inputs, slot_map, _ = make_case("gated_deltanet", "dla", 36, 16, 16, device)
    q, k, v, log_decay, beta, lam, _ = inputs
    whole, whole_state = triton_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, chunk_size=16)
    cut = 20
    first, state = triton_gated_delta_rule(
        *(x[:, :cut] for x in (q, k, v, log_decay, beta)), slot_map[:, :cut], lam[:, :cut], chunk_size=16
    )
    second, final_state = triton_gated_delta_rule(
        *(x[:, cut:] for x in (q, k, v, log_decay, beta)), slot_map[:, cut:], lam[:, cut:], state, chunk_size=16
    )
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final_state, whole_state, atol=1e-4, rtol=1e-4)


def test_inference_keeps_two_chunk_states_and_gives_the_same_result(device):
    """Without gradients the slot recurrence keeps two chunk starts in turn instead of all of them."""
    inputs, slot_map, _ = make_case("gated_deltanet", "dla", 40, 16, 16, device)
    q, k, v, log_decay, beta, lam, state = inputs
    with torch.no_grad():
        out, final_state = triton_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, state, chunk_size=16)
    expected = outputs_and_grads(naive_gated_delta_rule, inputs, slot_map)
    torch.testing.assert_close(out, expected["o"].detach(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(final_state, expected["final_state"].detach(), atol=1e-3, rtol=1e-3)
