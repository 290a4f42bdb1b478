"""The naive recurrence is the ground truth: the chunked op must match it (outputs, final states, gradients),
lambda = 1 must give the backbone, and the vanilla backbone must match transformers' own references."""

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import (
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from hf_dla.memory_plans import build_memory_plan
from hf_dla.ops.chunk import chunk_gated_delta_rule, chunk_mamba2
from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2

OPS = {"mamba2": (naive_mamba2, chunk_mamba2), "gated_deltanet": (naive_gated_delta_rule, chunk_gated_delta_rule)}
B, T, H, K, V = 2, 45, 2, 8, 4  # T is not a multiple of the chunk size


def planned_slot_map(memory, keys, max_states=7, merge_threshold=0.9):
    plan = build_memory_plan(memory, max_states, merge_threshold)
    valid = torch.ones(keys.shape[:2], dtype=torch.bool)
    valid[1, :6] = False  # left padding in the second sequence
    return plan(
        keys, valid, plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], "cpu")
    ).slot_map, plan.num_slots


def run_with_grads(op, inputs, slot_map, weights, **kwargs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, log_decay, beta, lam, initial_state = leaves
    out, state = op(q, k, v, log_decay, beta, slot_map, lam, initial_state, **kwargs)
    ((out * weights[0]).sum() + (state * weights[1]).sum()).backward()
    return out, state, [x.grad for x in leaves]


@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
@pytest.mark.parametrize("memory", ["vanilla", "loglinear", "dla"])
def test_chunk_matches_naive_outputs_states_and_gradients(mixer, memory, make_op_inputs):
    torch.manual_seed(0)
    slot_map, slots = planned_slot_map(memory, torch.randn(B, T, H, K))
    inputs = make_op_inputs(B, T, H, K, V, slots, delta_rule=mixer == "gated_deltanet")
    weights = (torch.randn(B, T, H, V), torch.randn(B, H, slots, K, V))
    naive, chunk = OPS[mixer]
    out_n, state_n, grads_n = run_with_grads(naive, inputs, slot_map, weights)
    out_c, state_c, grads_c = run_with_grads(chunk, inputs, slot_map, weights, chunk_size=16)
    torch.testing.assert_close(out_c, out_n, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state_c, state_n, atol=1e-4, rtol=1e-4)
    for name, g_c, g_n in zip(["q", "k", "v", "log_decay", "beta", "lam", "initial_state"], grads_c, grads_n):
        torch.testing.assert_close(g_c, g_n, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
@pytest.mark.parametrize("memory", ["loglinear", "dla"])
@pytest.mark.parametrize("backend", [0, 1], ids=["naive", "chunk"])
def test_lambda_one_reduces_to_the_backbone(mixer, memory, backend, make_op_inputs):
    torch.manual_seed(1)
    slot_map, slots = planned_slot_map(memory, torch.randn(B, T, H, K))
    q, k, v, log_decay, beta, _, _ = make_op_inputs(B, T, H, K, V, slots, delta_rule=mixer == "gated_deltanet")
    op = OPS[mixer][backend]
    multi, multi_state = op(q, k, v, log_decay, beta, slot_map, torch.ones(B, T, H, slots))
    single, single_state = op(q, k, v, log_decay, beta)
    torch.testing.assert_close(multi, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(multi_state.sum(2), single_state[:, :, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reference", [torch_recurrent_gated_delta_rule, torch_chunk_gated_delta_rule])
@pytest.mark.parametrize("backend", [0, 1], ids=["naive", "chunk"])
def test_vanilla_gated_delta_rule_equals_transformers_qwen3_next(reference, backend, make_op_inputs):
    q, k, v, log_decay, beta, _, initial_state = make_op_inputs(B, T, H, K, V, 1, delta_rule=True, seed=3)
    unscaled_q = q * K**0.5  # transformers scales q by K ** -0.5 itself
    expected, expected_state = reference(
        unscaled_q, k, v, log_decay, beta, initial_state=initial_state[:, :, 0], output_final_state=True
    )
    out, state = OPS["gated_deltanet"][backend](q, k, v, log_decay, beta, initial_state=initial_state)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state[:, :, 0], expected_state, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_does_not_change_the_result(chunk_size, make_op_inputs):
    slot_map, slots = planned_slot_map("dla", torch.randn(B, T, H, K))
    q, k, v, log_decay, beta, lam, h0 = make_op_inputs(B, T, H, K, V, slots, delta_rule=True, seed=4)
    reference, _ = naive_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, h0)
    out, _ = chunk_gated_delta_rule(q, k, v, log_decay, beta, slot_map, lam, h0, chunk_size=chunk_size)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("op", [naive_mamba2, chunk_gated_delta_rule])
def test_bad_shapes_are_named(op, make_op_inputs):
    q, k, v, log_decay, beta, lam, h0 = make_op_inputs(1, 5, 2, 4, 3, 3, delta_rule=False)
    slot_map = torch.zeros(1, 5, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="v must be"):
        op(q, k, v[:, :, :1], log_decay, beta)
    with pytest.raises(ValueError, match="beta must be"):
        op(q, k, v, log_decay, beta[:, :4])
    with pytest.raises(ValueError, match="slot_map must be an int64"):
        op(q, k, v, log_decay, beta, slot_map.float(), lam)
    with pytest.raises(ValueError, match="lam must be"):
        op(q, k, v, log_decay, beta, slot_map, lam[..., :2])
    with pytest.raises(ValueError, match="initial_state must be"):
        op(q, k, v, log_decay, beta, slot_map, lam, h0[:, :, :2])
