"""Triton ops (CPU interpreter, or a GPU with TRITON_INTERPRET=0) on packed documents (fla-style ``cu_seqlens``).

Each document of a packed row gives, outputs, final states and input gradients, what it gives alone; float32,
1e-5 relative. Tiny shapes: the interpreter is slow. The model-level check through ``position_ids`` with
``backend="triton"`` is marked slow.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

from hf_dla import DLAConfig, DLAForCausalLM  # noqa: E402
from hf_dla.memory_plans import build_memory_plan  # noqa: E402
from hf_dla.ops.triton import TritonDynamicPlan, triton_gated_delta_rule, triton_mamba2  # noqa: E402

OPS = {"mamba2": triton_mamba2, "gated_deltanet": triton_gated_delta_rule}
LENGTHS = (5, 19, 9)  # the second document spans two chunks of 16
CLOSE = dict(rtol=1e-5, atol=1e-5)


def packed_case(mixer, memory, device, heads=1, key_dim=16, value_dim=16, seed=0):
    """Op inputs over the packed row, one initial state per document, and the plan."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, sum(LENGTHS), heads)
    q, k = torch.randn(*shape, key_dim, generator=generator), torch.randn(*shape, key_dim, generator=generator)
    if mixer == "gated_deltanet":
        q, k = F.normalize(q, dim=-1) * key_dim**-0.5, F.normalize(k, dim=-1)
    v = torch.randn(*shape, value_dim, generator=generator)
    log_decay, beta = -torch.rand(*shape, generator=generator), torch.rand(*shape, generator=generator)
    num_slots = {"vanilla": 1, "loglinear": 6, "dla": 3}[memory]
    lam = None if memory == "vanilla" else torch.rand(*shape, num_slots, generator=generator) + 0.5
    initial = 0.5 * torch.randn(len(LENGTHS), heads, num_slots, key_dim, value_dim, generator=generator)
    plan = build_memory_plan(memory, num_slots, merge_threshold=0.3)  # the Triton dla plan: in the model test
    leaves = [None if x is None else x.to(device) for x in (q, k, v, log_decay, beta, lam, initial)]
    return plan, leaves


def run(op, plan, leaves, cu_seqlens=None, with_states=True):
    leaves = [None if x is None else x.clone().requires_grad_() for x in leaves]
    q, k, v, log_decay, beta, lam, initial = leaves
    valid = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
    if cu_seqlens is None:
        slot_map = plan(k, valid, plan.init_state(1, k.shape[-2] * k.shape[-1], k.device)).slot_map
    else:
        slot_map = plan.plan_documents(k, valid, cu_seqlens).slot_map
    out, final = op(
        q, k, v, log_decay, beta, slot_map, lam, initial, with_states, cu_seqlens=cu_seqlens, chunk_size=16
    )
    loss = (out * out.cos()).sum()  # elementwise: the packed loss is the sum of the documents' losses
    if with_states:
        loss = loss + (final * final.cos()).sum()
    loss.backward()
    return out, final, [None if x is None else x.grad for x in leaves]


# "states": per-document initial and final states (padded-batch layout); "training": none (one chunk-aligned row).
# Default set: each mixer and each layout once; the rest of the mixer x memory x layout grid is marked slow.
CASES = [
    ("mamba2", "loglinear", "training"),
    ("gated_deltanet", "loglinear", "states"),
    ("gated_deltanet", "vanilla", "training"),
]
SLOW_CASES = [
    pytest.param(mixer, memory, states, marks=pytest.mark.slow)
    for mixer in ("mamba2", "gated_deltanet")
    for memory in ("vanilla", "loglinear", "dla")
    for states in ("states", "training")
    if (mixer, memory, states) not in CASES
]


@pytest.mark.parametrize(("mixer", "memory", "states"), CASES + SLOW_CASES)
def test_triton_packed_equals_documents_alone(mixer, memory, states, device):
    plan, leaves = packed_case(mixer, memory, device)
    with_states = states == "states"
    if not with_states:
        leaves[6] = None
    cu = torch.tensor([0, *LENGTHS], device=device).cumsum(0)
    packed_out, packed_final, packed_grads = run(OPS[mixer], plan, leaves, cu, with_states)
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        initial = leaves[6][i : i + 1] if with_states else None
        doc = [None if x is None else x[:, start:end] for x in leaves[:6]] + [initial]
        out, final, grads = run(OPS[mixer], plan, doc, None, with_states)
        torch.testing.assert_close(packed_out[:, start:end], out, **CLOSE)
        for name, packed_grad, grad in zip(("q", "k", "v", "log_decay", "beta", "lam"), packed_grads, grads):
            if grad is not None:
                torch.testing.assert_close(
                    packed_grad[:, start:end], grad, **CLOSE, msg=lambda m, n=name: f"d{n}: {m}"
                )
        if with_states:
            torch.testing.assert_close(packed_final[i : i + 1], final, **CLOSE)
            torch.testing.assert_close(packed_grads[6][i : i + 1], grads[6], **CLOSE)
        else:
            assert packed_final is None


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["loglinear", "dla"])
def test_triton_model_padding_free_equals_documents_alone(memory, device):
    """DLAForCausalLM(backend="triton") with position_ids as TRL's padding-free collator passes them."""
    config = DLAConfig(
        mixer="gated_deltanet", memory=memory, backend="triton", max_states=5, merge_threshold=0.6, chunk_size=16,
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_heads=1, head_dim=32, state_size=16,
        intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DLAForCausalLM(config).to(device)
    assert isinstance(model.model.layers[0].mixer.plan, TritonDynamicPlan) == (memory == "dla")  # its plan_documents
    with torch.no_grad():
        model.model.layers[0].mixer.read_weights.proj.weight.normal_(0.0, 0.3)  # lambda away from 1
    docs = [torch.randint(3, 64, (n,), generator=torch.Generator().manual_seed(n), device="cpu") for n in (6, 14)]

    def logits_and_grads(**inputs):
        model.zero_grad(set_to_none=True)
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
        (logits * logits.cos()).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed_logits, packed_grads = logits_and_grads(input_ids=torch.cat(docs)[None], position_ids=positions)
    alone = [logits_and_grads(input_ids=d[None]) for d in docs]
    torch.testing.assert_close(packed_logits, torch.cat([logits for logits, _ in alone], 1), **CLOSE)
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, sum(grads[name] for _, grads in alone), rtol=1e-5, atol=1e-5)


def test_triton_dla_plan_scans_packed_documents_in_place(device):
    """One kernel program per packed document: the slot maps and plan states of the PyTorch plan, per document."""
    keys = torch.randn(1, sum(LENGTHS), 2, 8, generator=torch.Generator().manual_seed(0)).to(device)
    valid = torch.ones(keys.shape[:2], dtype=torch.bool, device=device)
    valid[0, 3] = False  # padding inside a document changes nothing
    cu = torch.tensor([0, *LENGTHS], device=device).cumsum(0)
    expected = build_memory_plan("dla", 3, merge_threshold=0.3).plan_documents(keys, valid, cu)
    actual = TritonDynamicPlan(3, merge_threshold=0.3).plan_documents(keys, valid, cu)
    assert torch.equal(actual.slot_map, expected.slot_map) and (expected.trace["merged"] >= 0).any()
    for name in ("seen", "count", "tokens", "information", "summary", "start"):
        torch.testing.assert_close(getattr(actual.state, name), getattr(expected.state, name), check_dtype=False)
