"""The verify stage: math-verify with fallbacks, Countdown checking, pass rates, deadlines off the main thread."""

import threading
import time

import pytest
from datasets import Dataset

from hf_compress.helper_process import HelperProcess
from hf_compress.verify import check_countdown, check_math, extract_answer, verify
from kit.tiny import make_task_dataset


@pytest.mark.parametrize(
    "gold, text, correct, method",
    [
        ("14", "2 * 7 = 14. The answer is \\boxed{14}.", True, "math_verify"),
        ("1/2", "So \\boxed{\\frac{1}{2}}", True, "math_verify"),  # nested braces, LaTeX vs plain
        ("0.5", "<answer>1/2</answer>", True, "math_verify"),
        ("14", "The answer is 14.", True, "math_verify"),  # no marker: math-verify reads the text
        ("14", "\\boxed{15}", False, ""),
        ("B.", "\\boxed{b}", True, "exact"),  # a gold math-verify cannot read: exact fallback
        ("1000", "\\boxed{1e3}", True, "numeric"),  # scientific notation: numeric fallback
        ("x^2", "I do not know.", False, ""),
    ],
)
def test_check_math(gold, text, correct, method):
    check = check_math(gold, text)
    assert (check.correct, check.method) == (correct, method)


def test_check_math_flags_what_it_could_not_judge():
    assert check_math("B.", "\\boxed{C}").note == "unparsable_gold"
    assert check_math("x^2", "I do not know.").note == "no_answer"
    assert check_math("7", "\\boxed{7}").note == ""


def test_extract_answer_takes_the_last_marker():
    assert extract_answer("\\boxed{1} then <answer>2</answer>") == "2"
    assert extract_answer("<answer>2</answer> then \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert extract_answer("no marker") is None


def test_check_countdown():
    assert check_countdown([3, 4, 5], 17, "3*4 = 12. <answer>3 * 4 + 5</answer>").correct
    assert check_countdown([3, 4, 5], 17, "<answer>(3 * 4) + 5 = 17</answer>").correct
    assert not check_countdown([3, 4, 5], 17, "<answer>3 * 4 + 5 + 0</answer>").correct  # 0 was not given
    assert not check_countdown([3, 4, 5], 17, "<answer>4 * 4 + 1</answer>").correct
    assert not check_countdown([3, 4, 5], 17, "<answer>__import__('os').getcwd()</answer>").correct
    assert check_countdown([3, 4, 5], 17, "17").note == "no_answer"


def test_verify_adds_correctness_and_per_problem_pass_rates():
    rows = {
        "problem": ["p1", "p1", "p1", "p2", "p2"],
        "answer": ["4", "4", "4", "B.", "B."],
        "generation": ["\\boxed{4}", "\\boxed{5}", "\\boxed{4.0}", "\\boxed{C}", "no idea"],
    }
    checked = verify(Dataset.from_dict(rows))
    assert list(checked["correct"]) == [True, False, True, False, False]
    assert list(checked["pass_rate"]) == pytest.approx([2 / 3] * 3 + [0.0] * 2)
    assert list(checked["verify_note"]) == ["", "", "", "unparsable_gold", "unparsable_gold"]  # flagged, kept
    only_correct = verify(Dataset.from_dict(rows), keep_only_correct=True)
    assert list(only_correct["generation"]) == ["\\boxed{4}", "\\boxed{4.0}"]


def test_verify_checks_countdown_rows_with_the_countdown_rules():
    data = make_task_dataset("countdown", 6, seed=0)
    wrong_last = [t if i < 5 else t.replace("<answer>", "<answer>1 + ") for i, t in enumerate(data["trace"])]
    checked = verify(data.add_column("generation", wrong_last))
    assert list(checked["correct"]) == [True] * 5 + [False]
    assert set(checked["verify_method"]) == {"countdown", ""}


def test_verify_names_missing_columns():
    with pytest.raises(ValueError, match=r"\['generation'\]"):
        verify(Dataset.from_dict({"problem": ["p"], "answer": ["1"]}))
    with pytest.raises(ValueError, match=r"\['numbers', 'target'\]"):
        verify(Dataset.from_dict({"problem": ["p"], "generation": ["g"]}), task="countdown")


def test_math_verify_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(check_math("1/2", "\\boxed{0.5}", timeout_seconds=5)))
    thread.start()
    thread.join()
    assert results and results[0].correct and results[0].method == "math_verify"


def test_helper_process_enforces_the_deadline_and_recovers():
    helper = HelperProcess()
    try:
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="did not finish within 1"):
            helper.call("time:sleep", [30], timeout=1)
        assert time.perf_counter() - start < 10
        assert helper.call("math:gcd", [12, 18], timeout=30) == 6  # a fresh process after the kill
    finally:
        helper.close()


def test_a_truncated_trace_is_not_correct_unless_keep_truncated():
    # The token cap fell after the last step: the last number is the gold, but no answer was given.
    rows = Dataset.from_dict(
        {
            "problem": ["Compute 10 - 20 + 4 from left to right.", "Compute 1 + 1."],
            "answer": ["-6", "2"],
            "generation": ["10 - 20 = -10. -10 + 4 = -6. So the", "1 + 1 = 2. \\boxed{2}"],
            "finish_reason": ["length", "stop"],
        }
    )
    checked = verify(rows)
    assert checked["correct"] == [False, True] and checked["verify_note"] == ["truncated", ""]
    assert verify(rows, keep_truncated=True)["correct"] == [True, True]  # judged by the text: the old behaviour
    assert verify(rows.remove_columns("finish_reason"))["correct"] == [True, True]  # no finish reasons: by the text
