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


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory):
    """A tiny student whose greedy completions differ from problem to problem (a freshly initialised one answers
    every prompt with the same newlines): its weights redrawn, seeded, with a larger spread."""
    import torch

    folder = str(tmp_path_factory.mktemp("student"))
    tokenizer = build_tokenizer()
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=2, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def serve_greedily(folder: str):
    """What a server in front of the student answers: its greedy completion, one request at a time."""
    from hf_compress.evaluation import load_student_for_eval

    model, tokenizer = load_student_for_eval(folder)

    def answer(body: dict) -> tuple[str, int, str]:
        assert body["temperature"] == 0  # eval asks for greedy decoding
        texts, counts, capped = greedy_generate(
            model, tokenizer, [body["messages"]], max_new_tokens=body["max_tokens"], batch_size=1
        )
        return texts[0], counts[0], "length" if capped[0] else "stop"

    return answer


@pytest.mark.slow  # three evaluations of 10 problems and a local server: about 10 s on the loaded 2-core CPU
def test_eval_through_a_local_server_matches_the_transformers_path(student_folder, teacher_server, tmp_path):
    """`hf-compress eval --backend openai` against a server decoding the same student greedily gives the transformers
    path's completions, token counts and cap flags, hence its accuracy (one metric judges both); resumable in shards:
    a run that loses its server keeps its finished shards, and the rerun asks only for the rest."""
    from hf_compress.cli import main

    test = make_task_dataset("arithmetic", 10, seed=1, split="test")
    test.save_to_disk(str(tmp_path / "test"))
    common = ["--input", str(tmp_path / "test"), "--max_new_tokens", "8", "--shard_size", "4"]
    main(["eval", "--model", student_folder, "--output", str(tmp_path / "here"), *common])
    teacher_server.behaviour.answer = serve_greedily(student_folder)
    teacher_server.behaviour.fail_after = 6  # the server goes down in the second shard
    served = [
        "eval",
        "--backend",
        "openai",
        "--model",
        "student",
        "--base_url",
        teacher_server.base_url,
        "--max_concurrency",
        "1",
        "--max_retries",
        "0",
        "--output",
        str(tmp_path / "served"),
        *common,
    ]
    with pytest.raises(SystemExit):
        main(served)
    teacher_server.behaviour.fail_after, teacher_server.behaviour.requests = None, 0
    main(served)
    assert teacher_server.behaviour.requests == 6  # the 4 problems of the finished shard were not asked again

    here, there = (json.load(open(tmp_path / name / EVAL_FILE)) for name in ("here", "served"))
    assert there["backend"] == "openai" and there["model"] == "student"
    for key in ("n", "accuracy", "output_tokens_mean", "output_tokens_max", "hit_cap_rate"):
        assert there[key] == here[key], key
    tables = [load_from_disk(str(tmp_path / name / EVAL_TABLE_DIR)) for name in ("here", "served")]
    for column in ("completion", "correct", "output_tokens", "hit_cap"):
        assert tables[1][column] == tables[0][column], column
    assert any(tables[0]["hit_cap"]) and len(set(tables[0]["completion"])) > 1  # not a degenerate comparison


def test_eval_with_a_server_needs_an_output_folder(tmp_path):
    from hf_compress.commands import parse_command
    from hf_compress.validation import UsageError

    with pytest.raises(UsageError, match="--output is needed with --backend openai"):
        parse_command("eval", ["--backend", "openai", "--model", "served", "--input", str(tmp_path)])
