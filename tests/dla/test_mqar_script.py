"""The MQAR comparison script (examples/repro/dla_mqar.py): metric, live-state counting, settings check, a tiny run."""

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, TrainingArguments

from examples.repro.dla_mqar import (
    RetrievalTaskArguments,
    TinyDLAArguments,
    check_settings,
    live_states_per_layer,
    recall_accuracy,
    results_table,
    run_comparison,
    tiny_dla_config,
)
from hf_dla import DLAForCausalLM, LogLinearPlan

TINY_MODEL = TinyDLAArguments(
    hidden_size=16, num_hidden_layers=2, num_heads=2, state_size=8, intermediate_size=32, max_states=6, chunk_size=8
)


def test_recall_accuracy_scores_the_previous_position_at_answers_only():
    labels = np.array([[-100, -100, 7, -100, 9], [-100, 5, -100, -100, -100]])
    # position t predicts the label at t + 1: answers 7 (pos 1), 9 (pos 3), 5 (pos 0)
    predictions = np.array([[0, 7, 0, 1, 0], [4, 0, 0, 0, 0]])
    assert recall_accuracy(EvalPrediction(predictions=predictions, label_ids=labels)) == {"accuracy": 1 / 3}
    predictions[1, 0] = 5
    predictions[0, 3] = 9
    assert recall_accuracy(EvalPrediction(predictions=predictions, label_ids=labels)) == {"accuracy": 1.0}


def test_loglinear_live_states_match_the_fenwick_plan():
    """Replay the plan's slot maps to count occupied levels per token; compare with the popcount formula."""
    length = 40
    plan = LogLinearPlan(num_levels=7)
    keys = torch.randn(1, length, 1, 4)
    valid = torch.ones(1, length, dtype=torch.bool)
    slot_map = plan(keys, valid, plan.init_state(1, 4, keys.device)).slot_map[0]
    occupied, counts = set(), []
    for t in range(length):
        occupied = {int(slot_map[t, s]) for s in occupied} | {0}
        counts.append(len(occupied))
    model = DLAForCausalLM(tiny_dla_config(TINY_MODEL, "mamba2", "loglinear", vocab_size=16))
    per_layer = live_states_per_layer(model, torch.zeros(1, length, dtype=torch.long))
    assert per_layer == pytest.approx([np.mean(counts)] * 2)


def test_dla_live_states_are_bounded_and_end_at_the_plan_count():
    torch.manual_seed(0)
    model = DLAForCausalLM(tiny_dla_config(TINY_MODEL, "gated_deltanet", "dla", vocab_size=16))
    input_ids = torch.randint(0, 16, (3, 24))
    per_layer = live_states_per_layer(model, input_ids)
    assert len(per_layer) == 2 and all(1.0 <= x <= TINY_MODEL.max_states for x in per_layer)
    records = []
    model.model(input_ids=input_ids, use_cache=False, memory_trace=records)
    trace = records[0]["trace"]
    final = trace["opened"].long().sum(1) - (trace["merged"] >= 0).long().sum(1)
    assert torch.equal(final, records[0]["state"].count)


def test_check_settings_names_the_loglinear_level_constraint():
    task = RetrievalTaskArguments(eval_seq_lens=[32, 256])
    with pytest.raises(ValueError, match="set --max_states 9"):
        check_settings(task, TinyDLAArguments(max_states=8))
    check_settings(task, TinyDLAArguments(max_states=9))
    check_settings(
        RetrievalTaskArguments(eval_seq_lens=[256], memories=["vanilla", "dla"]), TinyDLAArguments(max_states=2)
    )


def test_tiny_comparison_runs_end_to_end(tmp_path):
    task = RetrievalTaskArguments(
        mixers=["gated_deltanet"],
        memories=["vanilla", "dla"],
        vocab_size=16,
        train_seq_len=16,
        train_num_kv_pairs=[2],
        num_train_examples=16,
        eval_seq_lens=[16, 32],
        eval_num_kv_pairs=[2, 4],
        num_eval_examples=4,
        num_memory_examples=2,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    rows, models = run_comparison(task, TINY_MODEL, args)
    assert set(models) == {("gated_deltanet", "vanilla"), ("gated_deltanet", "dla")}
    assert [r["setting"] for r in rows] == ["T16_N2", "T16_N4", "T32_N2", "T32_N4"] * 2
    assert all(0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["eval_loss"]) for r in rows)
    vanilla, dla = rows[0], rows[4]
    assert vanilla["max_states"] == 1 and dla["max_states"] == 6
    assert dla["num_parameters"] > vanilla["num_parameters"]  # the read weights
    table = results_table(rows)
    assert table.count("\n") == 3 and "| gated_deltanet | dla |" in table


def test_passkey_task_trains_and_reports_by_haystack_length(tmp_path):
    task = RetrievalTaskArguments(
        task="passkey",
        mixers=["mamba2"],
        memories=["loglinear"],
        vocab_size=16,
        train_haystack_len=10,
        eval_haystack_lens=[10, 20],
        passkey_len=2,
        num_train_examples=16,
        num_eval_examples=4,
        num_memory_examples=2,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    rows, _ = run_comparison(task, TINY_MODEL, args)
    assert [(r["setting"], r["seq_len"]) for r in rows] == [("H10", 16), ("H20", 26)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    with pytest.raises(ValueError, match="set --max_states 8"):  # 60 + 2 * 3 = 66 tokens
        check_settings(RetrievalTaskArguments(task="passkey", eval_haystack_lens=[60]), TINY_MODEL)


def test_reference_rows_train_transformers_own_models_on_the_same_data(tmp_path):
    from transformers import Mamba2ForCausalLM, Qwen3NextForCausalLM

    from examples.repro.dla_mqar import REFERENCE, reference_model, seed_table

    task = RetrievalTaskArguments(
        mixers=["mamba2", "gated_deltanet"], memories=[REFERENCE], vocab_size=16, train_seq_len=16,
        train_num_kv_pairs=[2], num_train_examples=16, eval_seq_lens=[16], eval_num_kv_pairs=[2], num_eval_examples=4,
        num_memory_examples=2,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    rows, models = run_comparison(task, TINY_MODEL, args)
    assert isinstance(models["mamba2", REFERENCE], Mamba2ForCausalLM)
    assert isinstance(models["gated_deltanet", REFERENCE], Qwen3NextForCausalLM)
    assert [layer for layer in models["gated_deltanet", REFERENCE].config.layer_types] == ["linear_attention"] * 2
    by_model = {(r["mixer"], r["memory"]): r for r in rows}
    for mixer in task.mixers:  # the same size as the vanilla DLA model, up to the parametrisation
        reference = by_model[mixer, REFERENCE]
        vanilla = DLAForCausalLM(tiny_dla_config(TINY_MODEL, mixer, "vanilla", 16)).num_parameters()
        assert reference["max_states"] == 1 and reference["live_states_per_layer"] == [1.0, 1.0]
        assert reference["num_parameters"] == reference_model(TINY_MODEL, mixer, 16).num_parameters()
        assert abs(reference["num_parameters"] - vanilla) <= 0.02 * vanilla
    assert "| mamba2 | reference |" in results_table(rows)
    vanilla_rows = [dict(r, memory="vanilla") for r in rows]
    lines = seed_table([dict(r, seed=0) for r in rows + vanilla_rows]).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["| mamba2", "vanilla"], ["| mamba2", "reference"], ["| gated_deltanet", "vanilla"],
        ["| gated_deltanet", "reference"],
    ]  # fmt: skip


@pytest.mark.slow  # 300 training steps: 54 s at load 6, ~200 s at load 12 on the shared 2-core CPU
def test_vanilla_mamba2_learns_mqar_from_its_default_initialisation(tmp_path):
    """The recipe's task (length 32, vocabulary 32) and model at a quarter of its budget: with the initialisation of
    transformers' Mamba2ForCausalLM, vanilla Mamba-2 leaves chance (1/16) far behind (0.395 at 2 pairs here on
    2026-12-04; the earlier init stayed near chance even at the full budget)."""
    task = RetrievalTaskArguments(
        mixers=["mamba2"], memories=["vanilla"], vocab_size=32, train_seq_len=32, train_num_kv_pairs=[2, 4],
        num_train_examples=2000, eval_seq_lens=[32], eval_num_kv_pairs=[2, 4], num_eval_examples=100,
        num_memory_examples=2,
    )  # fmt: skip
    model = TinyDLAArguments(
        hidden_size=64, num_hidden_layers=2, num_heads=2, state_size=16, intermediate_size=128, max_states=8,
        chunk_size=16,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=300, per_device_train_batch_size=32, learning_rate=3e-3, weight_decay=0.1,
        warmup_steps=30, lr_scheduler_type="cosine", max_grad_norm=1.0, report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, seed=0,
    )  # fmt: skip
    rows, _ = run_comparison(task, model, args)
    accuracy = {r["setting"]: r["accuracy"] for r in rows}
    chance = 1 / 16  # keys and values are drawn from half the vocabulary each
    assert accuracy["T32_N2"] > 4 * chance and accuracy["T32_N4"] > 2 * chance, accuracy
