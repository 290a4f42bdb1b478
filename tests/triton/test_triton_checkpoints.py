"""The slot recurrence's backward from sparse checkpoints: slot states kept every R chunks, the others recomputed.

Against the naive per-token op (outputs, final states, every gradient, atol = rtol = 1e-3) for R = 1 (every chunk
start kept, no recompute), R = 2 and R = 3 over 5 chunks (R does not divide the chunk count: a short last
segment), dla slot maps that merge; and the saved-state memory the formula of `saved_state_chunks` predicts,
measured on the tensors autograd keeps.
"""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

from hf_dla.ops.triton import chunk as triton_chunk  # noqa: E402
from tests.triton.test_triton_parity import OPS, make_case, merge_count, outputs_and_grads  # noqa: E402

SEQ_LEN, CHUNK, KEY_DIM, VALUE_DIM = 69, 16, 16, 16  # 5 chunks, the last one padded


SLOW = pytest.mark.slow


# Default run: the recompute path on the delta rule (the carry is a matrix); the rest of the grid is slow.
@pytest.mark.parametrize(
    ("mixer", "every"),
    [("gated_deltanet", 2)]
    + [
        pytest.param(m, r, marks=SLOW)
        for m in ("mamba2", "gated_deltanet")
        for r in (1, 2, 3, None)
        if (m, r) != ("gated_deltanet", 2)
    ],
)
def test_checkpointed_backward_matches_naive(mixer, every, device):
    inputs, slot_map, trace = make_case(mixer, "dla", SEQ_LEN, KEY_DIM, VALUE_DIM, device)
    assert merge_count(trace) > 0
    naive, triton_op = OPS[mixer]
    expected = outputs_and_grads(naive, inputs, slot_map)
    actual = outputs_and_grads(triton_op, inputs, slot_map, chunk_size=CHUNK, checkpoint_every=every)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def saved_slot_state_bytes(op, inputs, slot_map, **kwargs) -> int:
    """Bytes of the 6-d float32 (B, H, chunks, S, K, V) slot states autograd keeps for the backward."""
    saved = []

    def pack(tensor):
        if tensor.dim() == 6:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    leaves = [x.clone().requires_grad_() for x in inputs]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        op(*leaves[:5], slot_map, *leaves[5:], **kwargs)
    return sum(saved)


@pytest.mark.parametrize("every", [1, 2, 3])
def test_saved_state_memory_matches_the_formula(every, device):
    inputs, slot_map, _ = make_case("mamba2", "dla", SEQ_LEN, KEY_DIM, VALUE_DIM, device)
    measured = saved_slot_state_bytes(OPS["mamba2"][1], inputs, slot_map, chunk_size=CHUNK, checkpoint_every=every)
    kept, _ = triton_chunk.saved_state_chunks(5, every)
    batch, heads, slots = 1, 2, slot_map.shape[-1]
    assert measured == batch * heads * kept * slots * KEY_DIM * VALUE_DIM * 4
    assert kept == {1: 6, 2: 3, 3: 2}[every]


def test_bad_checkpoint_every_is_refused(device):
    inputs, slot_map, _ = make_case("mamba2", "dla", SEQ_LEN, KEY_DIM, VALUE_DIM, device)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        OPS["mamba2"][1](*inputs[:5], slot_map, *inputs[5:], chunk_size=CHUNK, checkpoint_every=0)
