"""The `answer_accuracy` evaluate metric shipped in hf_compress: loadable offline with `evaluate.load(path)`, the same
judgement as the pipeline's verifier, and what `hf-compress eval` scores with."""

import json
import os
import subprocess
import sys

import evaluate
import pytest
from datasets import Dataset

import hf_compress.evaluation as evaluation
from hf_compress.metrics import ANSWER_ACCURACY

# (gold, completion): math-verify equivalences, fallbacks, wrong and missing answers.
MATH = [
    ("4", "2 + 2 = 4, so \\boxed{4}"),
    ("1/2", "Half of it: \\boxed{0.5}"),
    ("\\frac{1}{2}", "The answer is \\boxed{\\frac{2}{4}}."),
    ("7", "3 + 4 = 8. \\boxed{8}"),
    ("10", "I could not finish."),
    ("3", "<answer>3</answer>"),
    ("x + 1", "\\boxed{1 + x}"),
    ("12", "\\boxed{12.0}"),
    ("-5", "\\boxed{5}"),
]
COUNTDOWN = [
    ([3, 4, 5], 17, "<answer>3 * 4 + 5</answer>"),
    ([3, 4, 5], 17, "<answer>3 + 4 + 5</answer>"),
    ([3, 4, 5], 8, "<answer>(5 - 3) * 4</answer>"),
    ([3, 4, 5], 12, "<answer>3 * 4</answer>"),
    ([2, 6], 3, "no tags"),
]


def pipeline_flags(task: str) -> list[bool]:
    if task == "countdown":
        rows = {"numbers": [n for n, _, _ in COUNTDOWN], "target": [t for _, t, _ in COUNTDOWN]}
        return evaluation.pipeline_verifier("countdown")([x for _, _, x in COUNTDOWN], rows)
    return evaluation.pipeline_verifier("math")([x for _, x in MATH], {"answer": [g for g, _ in MATH]})


def test_metric_folder_ships_in_the_package():
    assert os.path.isfile(os.path.join(ANSWER_ACCURACY, "answer_accuracy.py"))
    assert os.path.dirname(os.path.dirname(ANSWER_ACCURACY)) == os.path.dirname(os.path.abspath(evaluation.__file__))


def test_metric_judges_as_the_pipeline_verifier_with_the_token_cost_beside():
    flags = pipeline_flags("math")
    assert 0 < sum(flags) < len(flags)  # a set with both outcomes
    tokens = list(range(10, 10 + len(MATH)))
    scores = evaluate.load(ANSWER_ACCURACY, keep_in_memory=True).compute(
        predictions=[x for _, x in MATH], references=[g for g, _ in MATH], output_tokens=tokens, return_correct=True
    )
    assert scores["correct"] == flags
    assert scores["accuracy"] == sum(flags) / len(flags) and scores["n"] == len(MATH)
    assert scores["accuracy_stderr"] == pytest.approx(
        (scores["accuracy"] * (1 - scores["accuracy"]) / len(MATH)) ** 0.5
    )
    assert scores["output_tokens_mean"] == sum(tokens) / len(tokens)
    assert scores["output_tokens_per_correct"] == sum(tokens) / sum(flags)

    countdown = evaluate.load(ANSWER_ACCURACY, "countdown", keep_in_memory=True)
    for numbers, target, text in COUNTDOWN:  # streamed, as an evaluation loop adds its batches
        countdown.add_batch(predictions=[text], references=[{"numbers": numbers, "target": target}])
    scores = countdown.compute(return_correct=True)
    assert scores["correct"] == pipeline_flags("countdown") and 0 < scores["accuracy"] < 1
    assert "output_tokens_mean" not in scores

    with pytest.raises(ValueError, match="Unknown config"):
        evaluate.load(ANSWER_ACCURACY, "chess", keep_in_memory=True)


OFFLINE_LOAD = """
import json, sys, evaluate
from hf_compress.metrics import ANSWER_ACCURACY
scores = evaluate.load(ANSWER_ACCURACY).compute(predictions=json.loads(sys.argv[1]), references=json.loads(sys.argv[2]),
                                                output_tokens=json.loads(sys.argv[3]))
print(json.dumps(scores))
"""


def test_evaluate_load_works_offline_in_a_fresh_process(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }  # nothing listens there
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            OFFLINE_LOAD,
            json.dumps([x for _, x in MATH]),
            json.dumps([g for g, _ in MATH]),
            json.dumps([5] * len(MATH)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.splitlines()[-1])
    flags = pipeline_flags("math")
    assert scores == {
        "accuracy": sum(flags) / len(flags),
        "accuracy_stderr": pytest.approx(scores["accuracy_stderr"]),
        "n": len(MATH),
        "output_tokens_mean": 5.0,
        "output_tokens_total": 5 * len(MATH),
        "output_tokens_per_correct": 5 * len(MATH) / sum(flags),
    }


@pytest.mark.parametrize("task", ["math", "countdown"])
def test_eval_scores_through_the_metric_with_the_numbers_of_the_pipeline_verifier(task, monkeypatch):
    if task == "countdown":
        rows = {
            "numbers": [n for n, _, _ in COUNTDOWN],
            "target": [t for _, t, _ in COUNTDOWN],
            "problem": ["p"] * len(COUNTDOWN),
        }
        texts = [x for _, _, x in COUNTDOWN]
    else:
        rows = {"answer": [g for g, _ in MATH], "problem": ["p"] * len(MATH)}
        texts = [x for _, x in MATH]
    counts = [3 + i for i in range(len(texts))]
    monkeypatch.setattr(evaluation, "greedy_generate", lambda *a, **k: (texts, counts, [False] * len(texts)))
    loaded = []
    load = evaluation.load_answer_accuracy
    monkeypatch.setattr(evaluation, "load_answer_accuracy", lambda t: loaded.append(t) or load(t))

    dataset = Dataset.from_dict(rows)
    summary, table = evaluation.evaluate_student(_Named(), dataset, tokenizer=object(), max_new_tokens=16)
    assert loaded == [task]
    before, before_table = evaluation.evaluate_student(
        _Named(), dataset, tokenizer=object(), max_new_tokens=16, verifier=evaluation.pipeline_verifier(task)
    )
    assert list(table["correct"]) == list(before_table["correct"]) == pipeline_flags(task)
    same = ("n", "accuracy", "accuracy_stderr", "output_tokens_mean", "output_tokens_per_correct", "task")
    assert {k: summary[k] for k in same} == {k: before[k] for k in same}
    assert summary["output_tokens_per_correct"] == sum(counts) / sum(pipeline_flags(task))


class _Named:
    name_or_path = "tiny-student"
