"""Stage 2: mark which traces reach the gold answer, and how often each problem is solved.

Math answers go through `math-verify` first (gold parsed once per distinct gold, `verify(gold, prediction)`
in that order: the comparison is not symmetric), then through exact-string and numeric fallbacks, which
catch answers math-verify cannot parse. Countdown answers are checked by evaluating the expression safely.

math-verify bounds its work with `signal.alarm`, which only the main thread may use. Off the main thread
(a web server, a thread pool), the check runs in a helper process instead and is abandoned at the deadline,
so a pathological expression can never hang the caller.
"""

from __future__ import annotations

import ast
import functools
import re
import threading
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from datasets import Dataset
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
from math_verify import verify as math_verify_equal

from .helper_process import HelperProcess
from .stages import require_columns, run_stage

TASKS = ("auto", "math", "countdown")
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(position, content) of each `\\boxed{...}`, with nested braces balanced (`\\boxed{\\frac{1}{2}}`)."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((match.start(), text[start:i]))
                break
    return found


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span of the last final-answer marker (`\\boxed{...}` or `<answer>...</answer>`), or None."""
    spans = [(m.start(), m.end()) for m in _ANSWER_TAG.finditer(text)]
    for start, content in _boxed_contents(text):
        spans.append((start, text.index(content, start) + len(content) + 1))
    return max(spans) if spans else None


def extract_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `<answer>...</answer>` in the text, stripped; None if absent."""
    found = [(m.start(), m.group(1)) for m in _ANSWER_TAG.finditer(text)] + _boxed_contents(text)
    return max(found)[1].strip() if found else None


# ----------------------------------------------------------------------------------------------------------
# Math answers
# ----------------------------------------------------------------------------------------------------------


def _normalize(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"\\text\{([^{}]*)\}", r"\1", answer)
    return re.sub(r"\s+", "", answer).rstrip(".").lower()


def _as_number(answer: str) -> float | None:
    cleaned = _normalize(answer).replace(",", "").replace("\\!", "")
    try:
        return float(Fraction(cleaned)) if "/" in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


@functools.lru_cache(maxsize=65536)
def _parse_gold(gold: str, timeout_seconds: int | None):
    """Parsed once per distinct gold string; an empty result means math-verify cannot read it."""
    # No fallback: a gold that only "parses" as its raw string must be reported as unparsable.
    return parse(f"\\boxed{{{gold}}}", _EXTRACTION, fallback_mode="no_fallback", parsing_timeout=timeout_seconds)


def _math_verify_match(gold: str, prediction: str, timeout_seconds: int | None) -> tuple[bool, bool]:
    """(gold is parsable, prediction equals gold) by math-verify; `timeout_seconds=None` disables its alarms."""
    gold_parsed = _parse_gold(gold, timeout_seconds)
    if not gold_parsed:
        return False, False
    predicted = parse(prediction, _EXTRACTION, parsing_timeout=timeout_seconds)
    return True, bool(predicted) and math_verify_equal(gold_parsed, predicted, timeout_seconds=timeout_seconds)


_HELPER = HelperProcess()


def call_with_deadline(function, args: tuple, timeout_seconds: int):
    """`function(*args, timeout_seconds)` from any thread, for a function whose last argument is math-verify's
    timeout: on the main thread math-verify's own alarms enforce it; elsewhere the function runs with the
    alarms off (`None`) in a helper process, killed with TimeoutError when the deadline passes.
    """
    if threading.current_thread() is threading.main_thread():
        return function(*args, timeout_seconds)
    target = f"{function.__module__}:{function.__name__}"
    return _HELPER.call(target, [*args, None], timeout=timeout_seconds * 3)  # parse + parse + compare


@dataclass
class Check:
    correct: bool
    predicted: str | None
    method: str  # which test accepted the answer: math_verify, exact, numeric, countdown; "" if none did
    note: str  # why the check was inconclusive: no_answer, unparsable_gold, timeout; "" otherwise


def check_math(gold: str, text: str, timeout_seconds: int = 5) -> Check:
    """Does `text` end with the gold answer? math-verify first, then exact and numeric fallbacks."""
    predicted = extract_answer(text)
    note = ""
    try:  # without an answer marker, math-verify reads the answer from the text ("the answer is 14")
        gold_ok, equal = call_with_deadline(
            _math_verify_match, (gold, f"\\boxed{{{predicted}}}" if predicted is not None else text), timeout_seconds
        )
        note = "" if gold_ok else "unparsable_gold"
    except TimeoutError:
        equal, note = False, "timeout"
    if equal:
        return Check(True, predicted, "math_verify", note)
    if predicted is not None and _normalize(predicted) == _normalize(gold):
        return Check(True, predicted, "exact", note)
    gold_number, predicted_number = _as_number(gold), _as_number(predicted or "")
    if gold_number is not None and predicted_number is not None:
        if abs(gold_number - predicted_number) <= 1e-6 * max(1.0, abs(gold_number)):
            return Check(True, predicted, "numeric", note)
    return Check(False, predicted, "", note or ("no_answer" if predicted is None else ""))


# ----------------------------------------------------------------------------------------------------------
# Countdown
# ----------------------------------------------------------------------------------------------------------

_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b}


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an arithmetic expression tree of integers and + - * /; anything else is rejected."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    raise ValueError(f"not allowed in a Countdown answer: {ast.dump(node)}")


def check_countdown(numbers: list[int], target: int, text: str) -> Check:
    """The last `<answer>` expression must use each given number exactly once and equal the target."""
    answers = _ANSWER_TAG.findall(text)
    if not answers:
        return Check(False, None, "", "no_answer")
    expression = answers[-1].split("=")[0].strip()
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return Check(False, expression, "", "")
    correct = Counter(used) == Counter(numbers) and value == target
    return Check(correct, expression, "countdown" if correct else "", "")


# ----------------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------------


def resolve_task(dataset: Dataset, task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
    if task == "auto":
        return "countdown" if {"numbers", "target"} <= set(dataset.column_names) else "math"
    return task


def check_texts(batch: dict, texts: list[str], task: str, answer_column: str, timeout_seconds: int) -> list[Check]:
    if task == "countdown":
        return [check_countdown(n, t, x) for n, t, x in zip(batch["numbers"], batch["target"], texts)]
    return [check_math(str(gold), x, timeout_seconds) for gold, x in zip(batch[answer_column], texts)]


def with_pass_rates(dataset: Dataset, problem_column: str) -> Dataset:
    """Add `pass_rate`: the fraction of its problem's samples that are correct."""
    solved, total = Counter(), Counter()
    for problem, correct in zip(dataset[problem_column], dataset["correct"]):
        solved[problem] += correct
        total[problem] += 1
    rates = [solved[p] / total[p] for p in dataset[problem_column]]
    return dataset.add_column("pass_rate", rates)


def verify(
    dataset: Dataset,
    *,
    task: str = "auto",
    completion_column: str = "generation",
    answer_column: str = "answer",
    problem_column: str = "problem",
    keep_only_correct: bool = False,
    timeout_seconds: int = 5,
    output_dir: str | None = None,
    shard_size: int = 2048,
    overwrite: bool = False,
) -> Dataset:
    """Add `correct`, `predicted_answer`, `verify_method`, `verify_note` and the per-problem `pass_rate`.

    `task="auto"` checks Countdown rows (with `numbers` and `target` columns) as Countdown, others as math.
    Rows whose gold answer math-verify cannot parse are flagged `verify_note="unparsable_gold"` and judged
    by the exact and numeric fallbacks alone. `keep_only_correct` drops incorrect rows after the pass rates
    are computed.
    """
    task = resolve_task(dataset, task)
    needed = [completion_column, problem_column] + (["numbers", "target"] if task == "countdown" else [answer_column])
    require_columns(dataset, needed, "verify")
    if not isinstance(timeout_seconds, int) or timeout_seconds < 1:
        raise ValueError(f"timeout_seconds must be an int >= 1 (math-verify's alarms count whole seconds), got {timeout_seconds!r}.")

    def check_batch(batch: dict) -> dict:
        checks = check_texts(batch, batch[completion_column], task, answer_column, timeout_seconds)
        return {
            "correct": [c.correct for c in checks],
            "predicted_answer": [c.predicted for c in checks],
            "verify_method": [c.method for c in checks],
            "verify_note": [c.note for c in checks],
        }

    def process_shard(shard: Dataset, shard_index: int, progress) -> Dataset:
        checked = shard.map(check_batch, batched=True, keep_in_memory=True, load_from_cache_file=False,
                            new_fingerprint=f"verify-{shard_index}")
        progress.update(len(shard))
        return checked

    def finalize(checked: Dataset) -> tuple[Dataset, dict]:
        checked = with_pass_rates(checked, problem_column)
        stats = summarize_verification(checked, problem_column)  # before filtering: unsolved problems count
        return (checked.filter(lambda correct: correct, input_columns="correct") if keep_only_correct else checked), stats

    arguments = {"task": task, "completion_column": completion_column, "answer_column": answer_column,
                 "problem_column": problem_column, "keep_only_correct": keep_only_correct}
    return run_stage(dataset, process_shard, stage="verify", arguments=arguments, output_dir=output_dir,
                     shard_size=shard_size, finalize=finalize, overwrite=overwrite)


def summarize_verification(checked: Dataset, problem_column: str = "problem") -> dict:
    """Pass rate over traces, mean per-problem pass rate, problems solved at least once, flagged rows."""
    correct = list(checked["correct"])
    rates = dict(zip(checked[problem_column], checked["pass_rate"])) if "pass_rate" in checked.column_names else {}
    notes = Counter(n for n in checked["verify_note"] if n)
    return {
        "traces": len(correct),
        "pass_rate": sum(correct) / max(1, len(correct)),
        "problems": len(rates),
        "mean_problem_pass_rate": sum(rates.values()) / max(1, len(rates)),
        "problems_solved": sum(r > 0 for r in rates.values()),
        "flags": dict(notes),
    }
