"""The dla plan's Triton scan (`TritonDynamicPlan`) makes the PyTorch plan's decisions."""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

from hf_dla.memory_plans import DynamicPlan  # noqa: E402
from hf_dla.ops.triton import TritonDynamicPlan  # noqa: E402


def topic_keys(batch, seq_len, heads, key_dim, topic_len=6, seed=0):
    """Keys that stay near one direction for a few tokens, so tokens both join and open slots."""
    generator = torch.Generator().manual_seed(seed)
    topics = torch.randn(batch, seq_len // topic_len + 1, heads, key_dim, generator=generator)
    keys = topics.repeat_interleave(topic_len, 1)[:, :seq_len]
    return keys + 0.3 * torch.randn(batch, seq_len, heads, key_dim, generator=generator)


def assert_same_plan(expected, actual):
    torch.testing.assert_close(actual.slot_map, expected.slot_map, rtol=0, atol=0)
    for name in ("opened", "merged"):
        torch.testing.assert_close(actual.trace[name], expected.trace[name], rtol=0, atol=0)
    torch.testing.assert_close(actual.trace["drift"], expected.trace["drift"], rtol=1e-5, atol=1e-5)
    for want, got in zip(expected.state.tensors(), actual.state.tensors()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def run_in_two_calls(plan, keys, valid, cut):
    """Plan a prefix, then the rest from the carried PlanState (how the cache hands it over)."""
    state = plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], keys.device)
    first = plan(keys[:, :cut], valid[:, :cut], state)
    return first, plan(keys[:, cut:], valid[:, cut:], first.state)


@pytest.mark.parametrize(
    ("batch", "seq_len", "max_states", "threshold", "cut"),
    [(1, 36, 3, 0.6, 12), pytest.param(3, 100, 5, 0.9, 40, marks=pytest.mark.slow)],
)
def test_triton_plan_matches_pytorch_plan(batch, seq_len, max_states, threshold, cut, device):
    keys = topic_keys(batch, seq_len, heads=2, key_dim=8).to(device)
    valid = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    valid[0, :3] = False  # left padding
    valid[-1, seq_len // 2 : seq_len // 2 + 2] = False
    expected = run_in_two_calls(DynamicPlan(max_states, threshold), keys, valid, cut)
    actual = run_in_two_calls(TritonDynamicPlan(max_states, threshold), keys, valid, cut)
    for want, got in zip(expected, actual):
        assert_same_plan(want, got)
    assert expected[1].trace["opened"].any() and (expected[1].trace["merged"] >= 0).any()  # both paths ran
    assert not expected[1].trace["opened"].all()  # and tokens joined slots


def test_triton_backend_model_uses_the_triton_plan_for_dla():
    import hf_dla

    config = hf_dla.DLAConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=32, state_size=16,
        intermediate_size=64, memory="dla", max_states=4, chunk_size=16, backend="triton",
    )  # fmt: skip
    assert isinstance(hf_dla.DLAForCausalLM(config).model.layers[0].mixer.plan, TritonDynamicPlan)


@pytest.mark.parametrize("backend", ["naive", "chunk", "triton"])
def test_build_memory_plan_returns_the_plan_of_the_backend(backend):
    from hf_dla.memory_plans import LogLinearPlan, VanillaPlan, build_memory_plan

    dla_plan = build_memory_plan("dla", 4, 0.5, backend=backend)
    assert type(dla_plan) is (TritonDynamicPlan if backend == "triton" else DynamicPlan)
    assert (dla_plan.num_slots, dla_plan.merge_threshold) == (4, 0.5)
    assert type(build_memory_plan("loglinear", 4, 0.5, backend=backend)) is LogLinearPlan  # no Triton variant
    assert type(build_memory_plan("vanilla", 4, 0.5, backend=backend)) is VanillaPlan
