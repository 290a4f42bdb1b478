"""Property tests of the memory plans (hypothesis): bounded slots in time order, counts that add up, plans
that are the same whole or token by token, Fenwick levels as Log-Linear Attention defines them, and
lambda = 1 giving the backbone under any plan."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dla.memory_plans import MEMORY_PLANS, DynamicPlan, LogLinearPlan, build_memory_plan
from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2

FAST = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def key_sequences(draw):
    """Random keys (B, T, H, K), a padding mask (left padding or holes) and DLA settings."""
    batch, seq_len = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    heads, key_dim = draw(st.integers(1, 2)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    # Few distinct directions so that slots are both joined and opened.
    directions = torch.randn(draw(st.integers(1, 4)), heads, key_dim, generator=generator)
    picks = torch.randint(0, directions.shape[0], (batch, seq_len), generator=generator)
    keys = directions[picks] + 0.3 * torch.randn(batch, seq_len, heads, key_dim, generator=generator)
    valid = torch.rand(batch, seq_len, generator=generator) > draw(st.sampled_from([0.0, 0.2]))
    max_states = draw(st.integers(2, 6))
    threshold = draw(st.floats(0.0, 1.5))
    return keys, valid, max_states, threshold


def plan_token_by_token(plan, keys, valid):
    state = plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], "cpu")
    maps, states = [], []
    for t in range(keys.shape[1]):
        out = plan(keys[:, t : t + 1], valid[:, t : t + 1], state)
        state = out.state
        maps.append(out.slot_map)
        states.append(state)
    return torch.cat(maps, 1), states


@FAST
@given(key_sequences())
def test_dla_slots_bounded_in_time_order_and_counting_every_token(case):
    keys, valid, max_states, threshold = case
    plan = DynamicPlan(max_states, threshold)
    maps, states = plan_token_by_token(plan, keys, valid)
    for t, state in enumerate(states):
        assert (state.count <= max_states).all()
        assert (maps[:, t] >= 0).all() and (maps[:, t] < max_states).all()
        # counts add up to the real tokens seen, and only live slots hold tokens
        torch.testing.assert_close(state.tokens.sum(1), valid[:, : t + 1].sum(1).float())
        for b in range(keys.shape[0]):
            live = int(state.count[b])
            assert (state.tokens[b, :live] >= 1).all() and (state.tokens[b, live:] == 0).all()
            starts = state.start[b, :live]
            assert (starts[:-1] > starts[1:]).all(), "slots must stay in time order (rank 0 = newest)"
            assert live == 0 or int(starts[-1]) == 0, "the oldest slot starts at the first real token"
            # a slot spans from its start to the next slot's start: its token count says the same
            spans = torch.cat([state.seen[b : b + 1], starts[:-1]]) - starts
            torch.testing.assert_close(spans.float(), state.tokens[b, :live])


@FAST
@given(key_sequences())
def test_dla_whole_sequence_plan_equals_token_by_token(case):
    keys, valid, max_states, threshold = case
    plan = DynamicPlan(max_states, threshold)
    whole = plan(keys, valid, plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], "cpu"))
    stepwise, states = plan_token_by_token(plan, keys, valid)
    assert torch.equal(whole.slot_map, stepwise)
    torch.testing.assert_close(whole.state.summary, states[-1].summary)


@FAST
@given(st.integers(1, 70), st.integers(0, 5))
def test_loglinear_levels_are_the_fenwick_decomposition(seq_len, left_pad):
    num_levels = math.ceil(math.log2(seq_len)) + 1
    plan = LogLinearPlan(num_levels)
    valid = torch.ones(1, left_pad + seq_len, dtype=torch.bool)
    valid[:, :left_pad] = False
    keys = torch.zeros(1, left_pad + seq_len, 1, 1)
    slot_map = plan(keys, valid, plan.init_state(1, 1, "cpu")).slot_map[0, left_pad:]
    level = torch.full((seq_len,), -1)  # slot index of every real token, followed through the maps
    for t in range(seq_len):
        written = level >= 0
        level[written] = slot_map[t][level[written]]
        level[t] = 0
        expected = [0 if i == t else (i ^ t).bit_length() for i in range(t + 1)]  # floor(log2(t xor i)) + 1
        assert level[: t + 1].tolist() == expected
    for lvl in range(1, num_levels):  # level l holds 2 ** (l - 1) tokens or none
        assert int((level == lvl).sum()) in (0, 2 ** (lvl - 1))


def test_loglinear_rejects_sequences_longer_than_its_level_table():
    plan = build_memory_plan("loglinear", 4, 0.5)
    keys = torch.zeros(1, 9, 1, 1)
    with pytest.raises(ValueError, match="max_states=4 levels holds at most 8 tokens.*at least 5"):
        plan(keys, torch.ones(1, 9, dtype=torch.bool), plan.init_state(1, 1, "cpu"))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(key_sequences(), st.sampled_from(["loglinear", "dla"]), st.booleans())
def test_every_lambda_one_equals_vanilla_under_any_plan(case, memory, delta_rule):
    keys, valid, max_states, threshold = case
    batch, seq_len, heads, key_dim = keys.shape
    if memory == "loglinear":
        max_states = max(max_states, math.ceil(math.log2(seq_len)) + 1)
    plan = build_memory_plan(memory, max_states, threshold)
    slot_map = plan(keys, valid, plan.init_state(batch, heads * key_dim, "cpu")).slot_map
    generator = torch.Generator().manual_seed(seq_len)
    q = torch.randn(batch, seq_len, heads, key_dim, generator=generator)
    k = torch.nn.functional.normalize(keys, dim=-1)
    v = torch.randn(batch, seq_len, heads, 3, generator=generator)
    log_decay, beta = -torch.rand(batch, seq_len, heads, generator=generator), torch.rand(batch, seq_len, heads)
    op = naive_gated_delta_rule if delta_rule else naive_mamba2
    multi, _ = op(q, k, v, log_decay, beta, slot_map, torch.ones(batch, seq_len, heads, plan.num_slots))
    single, _ = op(q, k, v, log_decay, beta)
    torch.testing.assert_close(multi, single, atol=1e-5, rtol=1e-5)


def _one_hot_keys(directions):
    keys = torch.zeros(1, len(directions), 1, 8)
    keys[0, torch.arange(len(directions)), 0, torch.tensor(directions)] = 1.0
    return keys


@pytest.mark.parametrize(
    ("directions", "merge_row"),
    [
        ([0, 1, 1, 1, 2, 2, 2, 3], [1, 1, 2]),  # newest pair (n=6, u=2) is the sparsest: ranks 0 and 1 merge
        ([0, 0, 0, 1, 2, 3], [1, 2, 2]),  # older pair (n=4, u=2) is the sparsest: ranks 1 and 2 merge
        ([0, 1, 2, 3], [1, 2, 2]),  # tie (density 1 everywhere): the oldest pair merges
    ],
)
def test_dla_merges_the_lowest_density_adjacent_pair_oldest_on_ties(directions, merge_row):
    plan = DynamicPlan(max_states=3, merge_threshold=0.5)
    keys = _one_hot_keys(directions)
    out = plan(keys, torch.ones(1, len(directions), dtype=torch.bool), plan.init_state(1, 8, "cpu"))
    assert out.slot_map[0, -1].tolist() == merge_row
    assert out.trace["opened"][0].tolist() == [d != p for d, p in zip(directions, [None] + directions[:-1])]
    assert int(out.state.count[0]) == 3 and out.state.tokens[0].sum() == len(directions)
    torch.testing.assert_close(out.state.information[0].sum(), torch.tensor(float(len(set(directions)))))


def test_memory_plans_names_every_mode_and_the_config_checks_against_it(make_config):
    assert tuple(MEMORY_PLANS) == ("vanilla", "loglinear", "dla")
    built = {name: build_memory_plan(name, 6, 0.5) for name in MEMORY_PLANS}
    assert [type(plan).__name__ for plan in built.values()] == ["VanillaPlan", "LogLinearPlan", "DynamicPlan"]
    assert [plan.num_slots for plan in built.values()] == [1, 6, 6]
    with pytest.raises(ValueError, match=r"memory='fenwick' is unknown; choose one of \('vanilla', 'loglinear', 'dla"):
        build_memory_plan("fenwick", 6, 0.5)
    with pytest.raises(Exception, match=r"DLAConfig.memory='fenwick' is unknown; choose one of \('vanilla', 'loglin"):
        make_config(memory="fenwick")
