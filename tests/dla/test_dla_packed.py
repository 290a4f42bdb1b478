"""Packed documents (TRL's padding-free batches): every document of a packed row gives what it gives alone.

Ops (naive, chunk) with fla-style ``cu_seqlens``, the memory plans' ``plan_documents``, and the model through
``position_ids`` / ``cu_seq_lens_q`` / ``seq_idx`` as TRL's `DataCollatorForLanguageModeling(padding_free=True)`
produces them: logits and parameter gradients in float32. The Triton ops are checked in
``tests/triton/test_triton_packed.py``, the TRL trainers in ``test_dla_packed_trl.py``.
"""

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_dla import DLAForCausalLM
from hf_dla.memory_plans import build_memory_plan
from hf_dla.ops.chunk import chunk_gated_delta_rule, chunk_mamba2
from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2

OPS = {
    ("naive", "mamba2"): naive_mamba2,
    ("naive", "gated_deltanet"): naive_gated_delta_rule,
    ("chunk", "mamba2"): chunk_mamba2,
    ("chunk", "gated_deltanet"): chunk_gated_delta_rule,
}
MIXERS, MEMORIES = ("mamba2", "gated_deltanet"), ("vanilla", "loglinear", "dla")
LENGTHS = (7, 13, 4)  # three documents; the chunk op (chunk 4) sees documents that end mid-chunk
TIGHT = dict(rtol=1e-5, atol=1e-6)


def documents(lengths=LENGTHS, vocab=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]


def cu_seqlens_of(lengths):
    return torch.tensor([0, *lengths]).cumsum(0)


# ----------------------------------------------------------------------------------------------------------
# Ops and plans
# ----------------------------------------------------------------------------------------------------------


def _op_case(mixer, memory, make_op_inputs):
    num_slots = {"vanilla": 1, "loglinear": 5, "dla": 3}[memory]
    inputs = make_op_inputs(1, sum(LENGTHS), 2, 8, 4, num_slots, mixer == "gated_deltanet")
    q, k, v, log_decay, beta, lam, _ = inputs
    docs_initial = make_op_inputs(len(LENGTHS) + 1, 1, 2, 8, 4, num_slots, False, seed=1)[-1]  # (N, H, S, K, V)
    plan = build_memory_plan(memory, num_slots, merge_threshold=0.3)
    return plan, [q, k, v, log_decay, beta, None if memory == "vanilla" else lam, docs_initial]


def _run_op(op, plan, leaves, cu_seqlens, kwargs):
    """Output, final states and the input gradients of a nonlinear elementwise loss on both."""
    leaves = [None if x is None else x.clone().requires_grad_() for x in leaves]
    q, k, v, log_decay, beta, lam, initial = leaves
    valid = torch.ones(q.shape[:2], dtype=torch.bool)
    if cu_seqlens is None:  # one document
        slot_map = plan(k, valid, plan.init_state(1, k.shape[-2] * k.shape[-1], k.device)).slot_map
        out, final = op(q, k, v, log_decay, beta, slot_map, lam, initial, **kwargs)
    else:
        slot_map = plan.plan_documents(k, valid, cu_seqlens).slot_map
        out, final = op(q, k, v, log_decay, beta, slot_map, lam, initial, cu_seqlens=cu_seqlens, **kwargs)
    loss = (out * out.cos()).sum()  # elementwise: the packed loss is the sum of the documents' losses
    if final is not None:
        loss = loss + (final * final.cos()).sum()
    loss.backward()
    return out, final, [None if x is None else x.grad for x in leaves]


# "states": per-document initial and final states (the padded-batch layout); "training": none in or out (the
# chunked backends lay the documents out chunk-aligned in one row).
@pytest.mark.parametrize("states", ["states", "training"])
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_packed_op_equals_documents_alone(backend, mixer, memory, states, make_op_inputs):
    plan, leaves = _op_case(mixer, memory, make_op_inputs)
    op, kwargs = OPS[backend, mixer], ({"chunk_size": 4} if backend == "chunk" else {})
    if states == "training":
        leaves[6], kwargs = None, {**kwargs, "output_final_state": False}
    cu = cu_seqlens_of((*LENGTHS[:2], 0, LENGTHS[2]))  # an empty document is allowed too
    packed_out, packed_final, packed_grads = _run_op(op, plan, leaves, cu, kwargs)
    assert packed_out.shape == leaves[2].shape
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if start == end:
            continue
        initial = None if leaves[6] is None else leaves[6][i : i + 1]
        out, final, grads = _run_op(
            op, plan, [None if x is None else x[:, start:end] for x in leaves[:6]] + [initial], None, kwargs
        )
        torch.testing.assert_close(packed_out[:, start:end], out, **TIGHT)
        for packed_grad, grad in zip(packed_grads[:6], grads[:6]):
            if grad is not None:
                torch.testing.assert_close(packed_grad[:, start:end], grad, **TIGHT)
        if states == "states":
            torch.testing.assert_close(packed_final[i : i + 1], final, **TIGHT)
            torch.testing.assert_close(packed_grads[6][i : i + 1], grads[6], **TIGHT)
        else:
            assert packed_final is None


@pytest.mark.parametrize("memory", ["loglinear", "dla"])
def test_plans_restart_at_every_document(memory):
    """loglinear's Fenwick positions count from each document start; dla opens fresh slots there."""
    keys = torch.randn(1, sum(LENGTHS), 2, 8, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(keys.shape[:2], dtype=torch.bool)
    plan = build_memory_plan(memory, 4, merge_threshold=0.3)  # loglinear 4 levels: 8 tokens, the packed row has 24
    cu = cu_seqlens_of((5, 8, 3, 8))
    planned = plan.plan_documents(keys, valid, cu)
    assert planned.state.seen.tolist() == [5, 8, 3, 8]
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone = plan(keys[:, start:end], valid[:, start:end], plan.init_state(1, 16, keys.device))
        assert torch.equal(planned.slot_map[:, start:end], alone.slot_map)
        for packed_field, alone_field in zip(planned.state.tensors(), alone.state.tensors()):
            torch.testing.assert_close(packed_field[i : i + 1], alone_field)
    if memory == "loglinear":
        with pytest.raises(ValueError, match="holds at most 8 tokens.*reaches 9"):  # a too long document still fails
            plan.plan_documents(keys, valid, cu_seqlens_of((7, 9, 8)))


def test_cu_seqlens_errors_name_the_fix(make_op_inputs):
    q, k, v, log_decay, beta, _, _ = make_op_inputs(2, 6, 1, 4, 4, 1, False)
    with pytest.raises(ValueError, match="batch size must be 1"):
        chunk_mamba2(q, k, v, log_decay, beta, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"rise from 0 to the packed length 6.*\[0, 4, 3, 6\]"):
        naive_mamba2(q[:1], k[:1], v[:1], log_decay[:1], beta[:1], cu_seqlens=torch.tensor([0, 4, 3, 6]))
    with pytest.raises(ValueError, match=r"one state per document: \(2, H, S, K, V\)"):
        state = torch.zeros(1, 1, 1, 4, 4)
        naive_mamba2(
            q[:1], k[:1], v[:1], log_decay[:1], beta[:1], None, None, state, cu_seqlens=torch.tensor([0, 2, 6])
        )


# ----------------------------------------------------------------------------------------------------------
# The model, through the arguments TRL's padding-free collator passes
# ----------------------------------------------------------------------------------------------------------


def build_model(make_config, **overrides):
    torch.manual_seed(0)
    model = DLAForCausalLM(make_config(**overrides)).train()
    with torch.no_grad():  # read weights start at exactly 1; spread them so that the slots are read differently
        for name, parameter in model.named_parameters():
            if "read_weights.proj.weight" in name:
                parameter.normal_(0.0, 0.3)
    return model


def logits_and_gradients(model, **inputs):
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    (logits * logits.cos()).sum().backward()  # elementwise: the packed loss is the sum of the documents' losses
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_padding_free_batch_equals_documents_alone(make_config, backend, mixer, memory):
    # max_states=5: loglinear holds 16 tokens, fewer than the packed row's 24 but more than its longest document
    model = build_model(make_config, mixer=mixer, memory=memory, backend=backend, max_states=5, chunk_size=4)
    docs = documents()
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": d.tolist()} for d in docs]
    )
    packed_logits, packed_grads = logits_and_gradients(
        model, input_ids=batch["input_ids"], position_ids=batch["position_ids"]
    )
    alone_logits, alone_grads = [], {}
    for doc in docs:
        logits, grads = logits_and_gradients(model, input_ids=doc[None])
        alone_logits.append(logits)
        alone_grads = {name: alone_grads.get(name, 0) + grad for name, grad in grads.items()}
    torch.testing.assert_close(packed_logits, torch.cat(alone_logits, 1), **TIGHT)
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) == len(list(model.parameters()))
    for name, grad in alone_grads.items():
        # float32 summation order; 2e-5 since Mamba-2 starts at its reference's initializer_range (0.1, larger gradients)
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_every_boundary_source_gives_the_same_documents(make_config):
    """position_ids, cu_seq_lens_q, seq_idx, and several packed rows (flattened) all give the documents alone."""
    model = build_model(make_config, mixer="gated_deltanet", memory="dla", max_states=4).eval()
    docs = documents((5, 6, 5, 8))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": d.tolist()} for d in docs]
    )
    with torch.no_grad():
        expected = torch.cat([model(d[None]).logits for d in docs], 1)
        ids = batch["input_ids"]
        for source in ("position_ids", "cu_seq_lens_q", "seq_idx"):
            torch.testing.assert_close(model(ids, **{source: batch[source]}).logits, expected, **TIGHT)
        every_key = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
        torch.testing.assert_close(model(ids, **every_key).logits, expected, **TIGHT)
        # Two packed rows of 11 and 13 tokens (packing without padding_free): rows and documents both restart.
        rows = torch.stack([torch.cat(docs[:2] + [docs[2][:2]]), torch.cat([docs[2][2:], docs[3], docs[0][:2]])])
        positions = torch.tensor([[*range(5), *range(6), 0, 1], [*range(3), *range(8), 0, 1]])
        row_logits = model(rows, position_ids=positions).logits
        tails = [[docs[0], docs[1], docs[2][:2]], [docs[2][2:], docs[3], docs[0][:2]]]
        row_expected = torch.stack([torch.cat([model(d[None]).logits[0] for d in row]) for row in tails])
        torch.testing.assert_close(row_logits, row_expected, **TIGHT)


def test_ordinary_position_ids_change_nothing(make_config):
    """Positions of ordinary (left-padded) rows, as `generate` computes them, start no extra document."""
    model = build_model(make_config, mixer="mamba2", memory="dla", max_states=4).eval()
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(model(ids, attention_mask=mask, position_ids=positions).logits, expected)
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        assert generated.shape == (2, 13)


def test_packed_loglinear_needs_only_the_longest_document(make_config):
    """max_states=4 holds 8 tokens: three packed documents of 7, 8 and 5 tokens fit, one of 9 does not."""
    model = build_model(make_config, memory="loglinear", max_states=4).eval()
    docs = documents((7, 8, 5))
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        model(torch.cat(docs)[None], position_ids=positions)
        with pytest.raises(ValueError, match="Raise max_states to at least 5"):
            model(torch.cat(documents((9, 3)))[None], position_ids=torch.tensor([[*range(9), *range(3)]]))


def test_packed_documents_refuse_a_filled_cache(make_config):
    model = build_model(make_config).eval()
    with torch.no_grad():
        cache = model(torch.tensor([[5, 6, 7]]), use_cache=True).cache
        assert model(torch.tensor([[5, 6, 0, 1]]), position_ids=torch.tensor([[0, 1, 0, 1]])).cache is None
        with pytest.raises(ValueError, match="cannot continue a cache"):
            model(torch.tensor([[5, 6, 0, 1]]), position_ids=torch.tensor([[0, 1, 0, 1]]), cache=cache)
        with pytest.raises(ValueError, match="must end at the number of packed tokens, B \\* T = 4"):
            model(torch.tensor([[5, 6, 0, 1]]), cu_seq_lens_q=torch.tensor([0, 2, 5]))
