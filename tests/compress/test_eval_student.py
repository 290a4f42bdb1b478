"""`hf_compress.evaluation`: batched greedy decoding, output lengths, accuracy, and the saved summary + table."""

import json

import pytest
from datasets import load_from_disk

from hf_compress.evaluation import (
    EVAL_FILE,
    EVAL_TABLE_DIR,
    _output_length,
    evaluate_student,
    greedy_generate,
    pipeline_verifier,
    save_evaluation,
)
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm


@pytest.fixture(scope="module")
def student():
    tokenizer = build_tokenizer()
    return tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=2, seed=3), tokenizer


def test_output_length_stops_at_the_first_stop_token():
    assert _output_length([5, 6, 2, 0, 0], {2}) == 3
    assert _output_length([5, 6, 7], {2}) == 3


def test_the_pipeline_verifier_judges_final_answers():
    verifier = pipeline_verifier("math")
    texts = ["2 + 3 = 5. The answer is \\boxed{5}.", "The answer is \\boxed{6}.", "no answer here"]
    assert verifier(texts, {"answer": ["5", "5", "5"]}) == [True, False, False]
    countdown = pipeline_verifier("countdown")
    assert countdown(["<answer>3 * 4 - 2</answer>"], {"numbers": [[2, 3, 4]], "target": [10]}) == [True]


def test_batched_decoding_matches_one_prompt_at_a_time(student):
    model, tokenizer = student
    prompts = make_task_dataset("arithmetic", 7, seed=1, split="test")["prompt"]
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    single = greedy_generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored


def test_summary_and_table(tmp_path, student):
    model, tokenizer = student
    test = make_task_dataset("arithmetic", 10, seed=0, split="test")
    right = set(test["answer"][:4])  # a verifier that accepts exactly the first four gold answers
    summary, table = evaluate_student(
        model,
        test,
        tokenizer=tokenizer,
        max_new_tokens=6,
        batch_size=4,
        verifier=lambda texts, rows: [gold in right for gold in rows["answer"]],
    )
    assert summary["n"] == 10 and summary["accuracy"] == pytest.approx(sum(a in right for a in test["answer"]) / 10)
    assert summary["accuracy_stderr"] == pytest.approx((summary["accuracy"] * (1 - summary["accuracy"]) / 10) ** 0.5)
    assert summary["output_tokens_mean"] == pytest.approx(sum(table["output_tokens"]) / 10)
    assert all(n <= 6 for n in table["output_tokens"])
    assert [n == 6 and cap for n, cap in zip(table["output_tokens"], table["hit_cap"])] == table["hit_cap"]
    save_evaluation(summary, table, str(tmp_path))
    assert json.loads((tmp_path / EVAL_FILE).read_text()) == summary
    assert load_from_disk(str(tmp_path / EVAL_TABLE_DIR))["completion"] == table["completion"]


def test_eval_set_without_answers_is_rejected(student):
    model, tokenizer = student
    test = make_task_dataset("arithmetic", 3, seed=0, split="test").remove_columns("answer")
    with pytest.raises(ValueError, match=r"no \['answer'\] column.*gold answers"):
        evaluate_student(model, test, tokenizer=tokenizer)


def test_a_student_path_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="student .*typo is not a folder here"):
        evaluate_student(str(tmp_path / "typo"), make_task_dataset("arithmetic", 2, seed=0, split="test"))
