"""Intervention analysis: the attention-blocking function against a hand-written reference, blocking in prefill and
cached decoding, the selection rule, and the analysis end to end (function and CLI)."""

import json

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_flowcredit.intervention import (
    BLOCKED_KEYS,
    attention_blocking,
    blocked_sdpa_attention,
    choose_positions,
    format_table,
    intervention_analysis,
    main,
)
from kit.tiny import build_tokenizer, tiny_causal_lm

TOKENIZER = build_tokenizer()


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1
    training = False


def _reference_attention(query, key, value, blocked):
    """Softmax attention written out: causal, and no query attends to a blocked key before it."""
    length = query.shape[2]
    positions = torch.arange(length)
    allowed = positions[None, :] <= positions[:, None]
    allowed = allowed[None, None] & ~(blocked[:, None, None, :] & (positions[None, :] < positions[:, None]))
    scores = (query @ key.transpose(-1, -2)) / query.shape[-1] ** 0.5
    probabilities = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (probabilities @ value).transpose(1, 2)


def test_blocked_attention_matches_reference():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 7, 8) for _ in range(3))
    blocked = torch.zeros(2, 7, dtype=torch.bool)
    blocked[0, [1, 4]] = True
    blocked[1, 0] = True
    token = BLOCKED_KEYS.set(blocked)
    try:
        output, _ = blocked_sdpa_attention(_Module(), query, key, value, None, scaling=8**-0.5)
    finally:
        BLOCKED_KEYS.reset(token)
    torch.testing.assert_close(output, _reference_attention(query, key, value, blocked))
    # With nothing blocked set, it is plain SDPA.
    plain, _ = blocked_sdpa_attention(_Module(), query, key, value, None, scaling=8**-0.5)
    expected, _ = sdpa_attention_forward(_Module(), query, key, value, None, scaling=8**-0.5)
    torch.testing.assert_close(plain, expected)


def _model():
    return tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=0).eval()


def test_blocking_changes_only_later_positions_and_restores_the_model():
    model = _model()
    input_ids = torch.tensor([TOKENIZER("Compute 3 + 4 * 2 from left to right.")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids).logits
        blocked = torch.zeros(1, input_ids.shape[1], dtype=torch.bool)
        blocked[0, 3] = True
        with attention_blocking(model, blocked):
            masked = model(input_ids).logits
    torch.testing.assert_close(masked[:, :4], plain[:, :4])  # positions up to the blocked one are untouched
    assert (masked[:, 4:] - plain[:, 4:]).abs().amax(-1).min() > 1e-6  # every later position is affected
    assert model.config._attn_implementation == "sdpa"


def test_blocking_is_the_same_in_cached_decoding_and_full_recompute():
    model = _model()
    prompts = [TOKENIZER("Compute 3 + 4")["input_ids"], TOKENIZER("Compute 12 - 7 * 2 now")["input_ids"]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[TOKENIZER.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = (input_ids != TOKENIZER.pad_token_id).long()
    blocked = torch.zeros(2, width + 6, dtype=torch.bool)
    blocked[0, width - 2] = blocked[1, 2] = True
    scores = {}
    with attention_blocking(model, blocked):
        for use_cache in (True, False):
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                use_cache=use_cache, output_scores=True, return_dict_in_generate=True,
                pad_token_id=TOKENIZER.pad_token_id,
            )  # fmt: skip
            scores[use_cache] = torch.stack(output.scores)
    torch.testing.assert_close(scores[True], scores[False], atol=1e-5, rtol=1e-5)


def test_choose_positions():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    generator = torch.Generator().manual_seed(0)
    assert choose_positions(scores, "top", 0.2, generator) == [2, 6]
    assert choose_positions(scores, "bottom", 0.2, generator) == [1, 9]
    assert choose_positions(scores, "none", 0.2, generator) == []
    chosen = choose_positions(scores, "random", 0.3, generator)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    assert choose_positions(scores[:2], "top", 0.2, generator) == [0]  # at least one token
    with pytest.raises(ValueError, match="selection"):
        choose_positions(scores, "middle", 0.2, generator)


# The random tiny model never writes \boxed{} (with tied embeddings it mostly repeats the last prompt token): call
# the last two characters of a completion its answer. Text prompts, so that the repeated token is not a newline.
LAST_CHARS = "regex:(..)$"


# A fixture on which blocking matters: the tiny model with its linear weights scaled up (sharper attention, so its
# greedy continuations depend on individual earlier tokens), and the 7th character of each completion as the answer.
SEVENTH_CHAR = "regex:^.{6}(.)"


def _sharp_model():
    model = _model()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed" not in name:
                parameter.mul_(4.0)
    return model


def test_intervention_analysis_end_to_end():
    model = _sharp_model()
    prompts = [f"Compute {a} + {b} =" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    results = intervention_analysis(
        model, TOKENIZER, prompts, scorer="flow", max_new_tokens=12, answer_max_new_tokens=4,
        answer_format=SEVENTH_CHAR, batch_size=3,
    )  # fmt: skip
    assert list(results) == ["none", "top", "random", "bottom"]
    assert results["none"]["changed_rate"] == 0.0  # the control regenerates exactly the original answers
    assert results["none"]["blocked_tokens_mean"] == 0.0
    for selection in ("top", "random", "bottom"):
        assert results[selection]["num_traces"] == 4
        assert results[selection]["blocked_tokens_mean"] >= 1
    # What FlowTracer predicts, deterministic on this seeded fixture (rates 0.5 / 0.25 / 0.25): blocking the flow-top
    # tokens changes more answers than the control and than blocking the flow-bottom ones. Blocking that does
    # nothing, or a reversed ranking, fails here.
    assert results["top"]["changed_rate"] > results["none"]["changed_rate"]
    assert results["top"]["changed_rate"] > results["bottom"]["changed_rate"]
    assert model.training is False and model.config._attn_implementation == "sdpa"
    table = format_table(results, "flow")
    assert "flow-top" in table and "none (control)" in table


def test_no_answer_anywhere_is_a_clear_error():
    with pytest.raises(ValueError, match="No greedy trace had an answer"):
        intervention_analysis(_model(), TOKENIZER, ["Compute 1 + 2."], max_new_tokens=4)


def test_cli_writes_the_table(tmp_path, capsys):
    model_dir = tmp_path / "model"
    _model().save_pretrained(model_dir)
    TOKENIZER.save_pretrained(model_dir)
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"Compute {a} + 1 ="}) for a in range(3)))
    output = tmp_path / "out" / "intervention.json"
    main([
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--prompt_column", "question",
        "--num_samples", "3", "--scorer", "random", "--max_new_tokens", "10", "--answer_format", LAST_CHARS,
        "--output_file", str(output),
    ])  # fmt: skip
    saved = json.loads(output.read_text())
    assert saved["none"]["changed_rate"] == 0.0 and saved["top"]["num_traces"] == 3
    assert "random-top" in capsys.readouterr().out
