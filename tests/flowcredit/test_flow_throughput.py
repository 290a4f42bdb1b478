"""flow_throughput against its definition: brute-force path sums, dense vs blockwise, padding, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_flowcredit.flow import flow_throughput, flow_throughput_blockwise, flow_throughput_dense

IMPLEMENTATIONS = [flow_throughput_dense, flow_throughput_blockwise]


def brute_force_throughput(attn, roles, renormalize):
    """Sum over every source-to-sink path of the product of its edges, for each token on the path.

    `roles[t]` is "source", "sink", "pad" or "inner". Written from the definition with plain loops.
    """
    length = len(roles)
    edges = [[0.0] * length for _ in range(length)]
    for j in range(length):
        if roles[j] == "pad":
            continue
        for i in range(j):
            if roles[i] != "pad":
                edges[j][i] = attn[j][i]
        total = sum(edges[j])
        if renormalize and total > 0:
            edges[j] = [value / total for value in edges[j]]
    for j in range(length):
        for i in range(length):
            if roles[j] == "source" or roles[i] == "sink":
                edges[j][i] = 0.0

    through = [0.0] * length

    def walk(path, weight):
        last = path[-1]
        if roles[last] == "sink":
            for node in path:
                through[node] += weight
            return
        for following in range(last + 1, length):
            if edges[following][last] > 0:
                walk([*path, following], weight * edges[following][last])

    for start in range(length):
        if roles[start] == "source":
            walk([start], 1.0)
    return through


@st.composite
def small_graphs(draw):
    length = draw(st.integers(2, 7))
    roles = draw(st.lists(st.sampled_from(["source", "sink", "pad", "inner"]), min_size=length, max_size=length))
    values = st.one_of(st.just(0.0), st.floats(0.01, 1.0))
    attn = draw(st.lists(st.lists(values, min_size=length, max_size=length), min_size=length, max_size=length))
    return attn, roles, draw(st.booleans())


def _as_tensors(attn, roles):
    masks = {role: torch.tensor([[r == role for r in roles]]) for role in ("source", "sink", "pad")}
    return torch.tensor([attn], dtype=torch.float64), masks["source"], masks["sink"], (~masks["pad"]).long()


@settings(max_examples=150, deadline=None, derandomize=True)  # the same graphs on every run
@given(small_graphs(), st.sampled_from(IMPLEMENTATIONS), st.integers(1, 4))
def test_matches_brute_force_path_enumeration(graph, implementation, block_size):
    attn, roles, renormalize = graph
    tensor, sources, sinks, attention_mask = _as_tensors(attn, roles)
    options = {"block_size": block_size} if implementation is flow_throughput_blockwise else {}
    result = implementation(tensor, sources, sinks, attention_mask=attention_mask, renormalize=renormalize, **options)
    expected = torch.tensor([brute_force_throughput(attn, roles, renormalize)], dtype=torch.float64)
    torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-12)


def _random_attention(batch, length, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, length, generator=generator, dtype=dtype) * 3
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


def _roles(batch, length, prompt, answer):
    sources = torch.zeros(batch, length, dtype=torch.bool)
    sinks = torch.zeros(batch, length, dtype=torch.bool)
    sources[:, :prompt] = True
    sinks[:, answer[0] : answer[1]] = True
    return sources, sinks


@pytest.mark.parametrize("block_size", [1, 7, 64, 300, 1000])
def test_blockwise_agrees_with_dense(block_size):
    attn = _random_attention(2, 300)
    sources, sinks = _roles(2, 300, 40, (280, 290))
    attention_mask = torch.ones(2, 300, dtype=torch.long)
    attention_mask[1, 290:] = 0
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        dense = flow_throughput_dense(attn.to(dtype), sources, sinks, attention_mask=attention_mask)
        blockwise = flow_throughput_blockwise(
            attn.to(dtype), sources, sinks, attention_mask=attention_mask, block_size=block_size
        )
        assert dense.dtype == blockwise.dtype == dtype
        assert dense.abs().max() > 0
        assert ((dense - blockwise).abs().max() / dense.abs().max()).item() < tolerance


def test_blockwise_takes_attention_lazily_one_slab_at_a_time():
    attn = _random_attention(1, 100)
    sources, sinks = _roles(1, 100, 10, (90, 95))
    requested = []

    def rows(start, end):
        requested.append((start, end))
        return attn[:, start:end].clone()

    backward_pass = [(start, min(100, start + 16)) for start in range(96, -1, -16)]
    for renormalize, forward_pass in ((True, [(90, 100)]), (False, backward_pass[::-1])):
        requested.clear()
        lazy = flow_throughput_blockwise(rows, sources, sinks, block_size=16, renormalize=renormalize)
        torch.testing.assert_close(lazy, flow_throughput_dense(attn, sources, sinks, renormalize=renormalize))
        # Every row once for G (last block first); F from the first answer token on (renormalised: F = 1 before it).
        assert requested == backward_pass + forward_pass


@pytest.mark.parametrize("edgeless_row", [0, 3, 40])
def test_forward_flow_is_solved_from_an_edgeless_row_before_the_answer(edgeless_row):
    # A real token outside the prompt with no edge to an earlier real token has F = 0, and so do the tokens that
    # attend to it: F = 1 no longer holds before the answer. Row 0 has no earlier token at all (the sequence starts
    # outside the prompt); rows 3 and 40 attend only to themselves.
    attn = _random_attention(2, 64, seed=4)
    attn[:, edgeless_row, :edgeless_row] = 0.0
    sources, sinks = _roles(2, 64, 20, (50, 56))
    sources[:, edgeless_row] = False
    requested = []

    def rows(start, end):
        requested.append((start, end))
        return attn[:, start:end]

    lazy = flow_throughput_blockwise(rows, sources, sinks, block_size=8)
    dense = flow_throughput_dense(attn, sources, sinks)
    torch.testing.assert_close(lazy, dense, rtol=1e-12, atol=1e-15)
    assert requested[8][0] == edgeless_row  # after the 8 blocks of the backward pass


def test_auto_picks_an_implementation_that_agrees():
    attn = _random_attention(1, 64)
    sources, sinks = _roles(1, 64, 8, (60, 62))
    auto = flow_throughput(attn, sources, sinks)
    torch.testing.assert_close(auto, flow_throughput(attn, sources, sinks, implementation="blockwise", block_size=5))
    lazy = flow_throughput(lambda start, end: attn[:, start:end], sources, sinks)  # callables go blockwise
    torch.testing.assert_close(auto, lazy)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tokens_that_cannot_reach_the_answer_score_zero(implementation):
    # 0 source; 1 attends to the source but nothing attends to 1; 2 attends only to 1; 3 is the sink (attends to 0, 2).
    attn = torch.zeros(1, 5, 5, dtype=torch.float64)
    attn[0, 1, 0] = 1.0
    attn[0, 2, 1] = 1.0
    attn[0, 3, 0] = 1.0
    attn[0, 4, 2] = 1.0  # token 4 comes after the sink: reachable from the source but it cannot reach the sink
    sources = torch.tensor([[True, False, False, False, False]])
    sinks = torch.tensor([[False, False, False, True, False]])
    scores = implementation(attn, sources, sinks)
    assert scores[0, 0] == 1.0 and scores[0, 3] == 1.0
    assert scores[0, 1] == scores[0, 2] == scores[0, 4] == 0.0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_left_and_right_padding_give_the_same_scores(implementation):
    length, pad = 40, 9
    attn = _random_attention(1, length, seed=3)
    sources, sinks = _roles(1, length, 12, (33, 36))
    junk = torch.rand(1, length + pad, length + pad, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def padded(left: bool):
        sl = slice(pad, None) if left else slice(0, length)
        big = junk.clone()  # garbage attention on padding rows and columns must not matter
        big[:, sl, sl] = attn
        masks = [torch.zeros(1, length + pad, dtype=torch.bool) for _ in range(3)]
        for big_mask, mask in zip(masks, (sources, sinks, torch.ones(1, length, dtype=torch.bool))):
            big_mask[:, sl] = mask
        return implementation(big, masks[0], masks[1], attention_mask=masks[2].long()), sl

    reference = implementation(attn, sources, sinks)
    for left in (True, False):
        scores, sl = padded(left)
        torch.testing.assert_close(scores[:, sl], reference, rtol=1e-12, atol=1e-15)
        assert scores.sum() == pytest.approx(scores[:, sl].sum().item())  # padding scores exactly 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_row_without_sinks_or_sources_scores_zero(implementation):
    attn = _random_attention(3, 20)
    sources, sinks = _roles(3, 20, 5, (15, 18))
    sinks[1] = False
    sources[2] = False
    scores = implementation(attn, sources, sinks)
    assert scores[0].abs().sum() > 0
    assert (scores[1:] == 0).all()


def _with_entry(attn, value):
    attn = attn.clone()
    attn[0, 5, 2] = value
    return attn


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda a, s, r: (a, s, s), ValueError, "overlap"),
        (lambda a, s, r: (a[:, :-1], s, r), ValueError, "shape"),
        (lambda a, s, r: (_with_entry(a, float("nan")), s, r), ValueError, "NaN"),
        (lambda a, s, r: (_with_entry(a, float("inf")), s, r), ValueError, "inf"),
        (lambda a, s, r: (-a, s, r), ValueError, "negative"),
        (lambda a, s, r: (a.to(torch.bfloat16), s, r), TypeError, "float32 or float64"),
        (lambda a, s, r: (a, s.long(), r), TypeError, "bool"),
    ],
)
def test_bad_input_gets_a_clear_error(implementation, corrupt, error, match):
    attn = _random_attention(1, 12)
    sources, sinks = _roles(1, 12, 3, (10, 11))
    attn, sources, sinks = corrupt(attn, sources, sinks)
    with pytest.raises(error, match=match):
        implementation(attn, sources, sinks)


def test_sources_or_sinks_on_padding_are_rejected():
    attn = _random_attention(1, 12)
    sources, sinks = _roles(1, 12, 3, (10, 11))
    attention_mask = torch.ones(1, 12, dtype=torch.long)
    attention_mask[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        flow_throughput(attn, sources, sinks, attention_mask=attention_mask)


def test_options_are_checked():
    attn = _random_attention(1, 12)
    sources, sinks = _roles(1, 12, 3, (10, 11))
    with pytest.raises(ValueError, match="implementation"):
        flow_throughput(attn, sources, sinks, implementation="sparse")
    with pytest.raises(ValueError, match="block_size"):
        flow_throughput_blockwise(attn, sources, sinks, block_size=0)
    with pytest.raises(ValueError, match=r"\[B, T, T\]"):
        flow_throughput(lambda start, end: attn[:, start:end], sources, sinks, implementation="dense")
    with pytest.raises(ValueError, match="rows 0..11"):
        flow_throughput_blockwise(lambda start, end: attn[:, :3], sources, sinks, block_size=12)


@pytest.mark.slow
def test_blockwise_agrees_with_dense_on_a_long_float32_sequence():
    length = 6000
    attn = _random_attention(1, length, dtype=torch.float32, seed=5)
    sources, sinks = _roles(1, length, 700, (length - 16, length))
    dense = flow_throughput_dense(attn, sources, sinks)
    blockwise = flow_throughput_blockwise(lambda start, end: attn[:, start:end], sources, sinks)
    assert ((dense - blockwise).abs().max() / dense.abs().max()).item() < 1e-5
