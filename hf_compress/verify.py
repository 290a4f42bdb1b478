"""Stage 2: mark which traces reach the gold answer, and how often each problem is solved.

Math answers go through `math-verify` first (gold parsed once per distinct gold, `verify(gold, prediction)`
in that order: the comparison is not symmetric), then through exact-string and numeric fallbacks, which
catch answers math-verify cannot parse. Countdown answers are checked by evaluating the expression safely.

Each trace's whole check (finding the answer, math-verify's parsing and comparison, the fallbacks) runs under one
deadline, `timeout_seconds`: on the main thread an interval timer (SIGALRM) interrupts it; off the main thread (a
web server, a thread pool), where signals cannot reach, it runs in a helper process that is killed at the deadline.
Either way a pathological expression or completion can never hang the caller; the trace is judged incorrect with
note "timeout". The deadline is the last resort: the answer is found in one pass over the end of the trace, and
math-verify reads only the answer region (`hf_compress.answers`), so a check takes milliseconds whatever the trace.

Only finished answers are judged: a trace that the token cap cut (`finish_reason == "length"`) is incorrect with
note "truncated" (its last number is no answer), unless `keep_truncated`.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from datasets import Dataset
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
from math_verify import verify as math_verify_equal

from .answers import answer_region, answer_span, answer_tags, extract_answer, find_answer  # noqa: F401 (re-exported)
from .helper_process import HelperProcess
from .row_checks import ID_COLUMN
from .stages import open_stage, run_stage
from .tasks import COUNTDOWN_COLUMNS, gold_columns, resolve_task

FINISH_COLUMN = "finish_reason"  # written by `generate`: "stop", "length", ...
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


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


class _DeadlinePassed(BaseException):
    """Raised by the interval timer in the middle of a check. A BaseException, like math-verify's own timeout, so
    that no `except Exception` in sympy or math-verify swallows it."""


def _raise_deadline_passed(signum, frame):
    raise _DeadlinePassed


def _run_until_deadline(function, args: tuple, timeout_seconds: float):
    """`function(*args)` on the main thread, interrupted with TimeoutError after `timeout_seconds` by a SIGALRM
    interval timer (the caller's SIGALRM handler and timer are put back afterwards)."""
    previous_handler = signal.signal(signal.SIGALRM, _raise_deadline_passed)
    started = time.monotonic()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_seconds)
    try:
        try:
            return function(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _DeadlinePassed:
        raise TimeoutError(f"{function.__name__} did not finish within {timeout_seconds}s") from None
    finally:  # (a handler installed from C reads as None: the default is the closest Python can put back)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler)
        if previous_delay:
            left = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _helper_ready() -> bool:
    """Called in the helper process before the timed call: a fresh helper imports hf_compress (and math-verify)
    here, outside the deadline."""
    return True


_HELPER = HelperProcess()
_HELPER_START_SECONDS = 300


class _WithoutAlarmNotice(logging.Filter):
    """math-verify warns once that its alarms are off (`timeout_seconds=None`): here the deadline is ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_WithoutAlarmNotice())


def call_with_deadline(function, args: tuple, timeout_seconds: float):
    """`function(*args)` (JSON-serializable arguments and result) from any thread, given up with TimeoutError when
    `timeout_seconds` pass. On the main thread an interval timer interrupts it; elsewhere (signals reach only the
    main thread) it runs in a helper process that is killed at the deadline. Either way math-verify's own alarms
    must be off in `function` (`timeout_seconds=None`): they would cancel the timer.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _run_until_deadline(function, args, timeout_seconds)
    _HELPER.call(f"{__name__}:{_helper_ready.__name__}", [], timeout=_HELPER_START_SECONDS)
    return _HELPER.call(f"{function.__module__}:{function.__name__}", list(args), timeout=timeout_seconds)


@dataclass
class Check:
    correct: bool
    predicted: str | None
    method: str  # which test accepted the answer: math_verify, exact, numeric, countdown; "" if none did
    note: str  # why the check was inconclusive: no_answer, unparsable_gold, timeout; "" otherwise


def _judge_math(gold: str, text: str) -> list:
    """The whole math check of one trace, with no deadline of its own (math-verify's alarms off):
    `[correct, predicted, method, note]`."""
    answer = find_answer(text)
    predicted = None if answer is None else answer.content
    # math-verify reads the answer region alone (bounded: its parser is not linear); without an answer, the tail.
    gold_ok, equal = _math_verify_match(gold, answer_region(text, answer), None)
    note = "" if gold_ok else "unparsable_gold"
    if equal:
        return [True, predicted, "math_verify", note]
    if predicted is not None and _normalize(predicted) == _normalize(gold):
        return [True, predicted, "exact", note]
    gold_number, predicted_number = _as_number(gold), _as_number(predicted or "")
    if gold_number is not None and predicted_number is not None:
        if abs(gold_number - predicted_number) <= 1e-6 * max(1.0, abs(gold_number)):
            return [True, predicted, "numeric", note]
    return [False, predicted, "", note or ("no_answer" if predicted is None else "")]


def check_math(gold: str, text: str, timeout_seconds: float = 5) -> Check:
    """Does `text` end with the gold answer? math-verify first, then exact and numeric fallbacks.

    The whole check (finding the answer, math-verify's parsing and comparison, the fallbacks) has `timeout_seconds`:
    a trace not judged by then is incorrect, with note "timeout" (and no predicted answer).
    """
    try:
        return Check(*call_with_deadline(_judge_math, (gold, text), timeout_seconds))
    except TimeoutError:
        return Check(False, None, "", "timeout")


# ----------------------------------------------------------------------------------------------------------
# Countdown
# ----------------------------------------------------------------------------------------------------------

_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


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
    tags = answer_tags(text)
    if not tags:
        return Check(False, None, "", "no_answer")
    _, first, last, _ = tags[-1]
    expression = text[first:last].split("=")[0].strip()
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


def check_texts(batch: dict, texts: list[str], task: str, answer_column: str, timeout_seconds: int) -> list[Check]:
    if task == "countdown":
        numbers, targets = (batch[column] for column in COUNTDOWN_COLUMNS)
        return [check_countdown(n, t, x) for n, t, x in zip(numbers, targets, texts)]
    return [check_math(str(gold), x, timeout_seconds) for gold, x in zip(batch[answer_column], texts)]


def judged_finished(checks: list[Check], finish_reasons: list[str]) -> list[Check]:
    """The checks with every trace the token cap cut (`finish_reason == "length"`) judged incorrect, note
    "truncated": its last number is where the cap fell, not an answer (the predicted answer, if any, is kept)."""
    return [
        Check(False, c.predicted, "", "truncated") if reason == "length" else c
        for c, reason in zip(checks, finish_reasons)
    ]


def problem_key_column(dataset: Dataset, problem_column: str, id_column: str = ID_COLUMN) -> str:
    """What identifies a trace's problem for the per-problem figures: its id when the input has `id_column`, else its
    text (two problems with the same text and different ids are then two problems)."""
    return id_column if id_column in dataset.column_names else problem_column


def with_pass_rates(dataset: Dataset, problem_column: str, id_column: str = ID_COLUMN) -> Dataset:
    """Add `pass_rate`: the fraction of its problem's samples that are correct (problems keyed by id, see
    `problem_key_column`)."""
    keys = dataset[problem_key_column(dataset, problem_column, id_column)]
    solved, total = Counter(), Counter()
    for key, correct in zip(keys, dataset["correct"]):
        solved[key] += correct
        total[key] += 1
    rates = [solved[k] / total[k] for k in keys]
    return dataset.add_column("pass_rate", rates)


def verify(
    dataset: Dataset,
    *,
    task: str = "auto",
    completion_column: str = "generation",
    answer_column: str = "answer",
    problem_column: str = "problem",
    keep_only_correct: bool = False,
    keep_truncated: bool = False,
    timeout_seconds: int = 5,
    output_dir: str | None = None,
    shard_size: int = 2048,
    overwrite: bool = False,
    skip_invalid_rows: bool = False,
    id_column: str = ID_COLUMN,
) -> Dataset:
    """Add `correct`, `predicted_answer`, `verify_method`, `verify_note` and the per-problem `pass_rate`.

    `task="auto"` checks Countdown rows (with `numbers` and `target` columns) as Countdown, others as math.
    Rows whose gold answer math-verify cannot parse are flagged `verify_note="unparsable_gold"` and judged
    by the exact and numeric fallbacks alone. `keep_only_correct` drops incorrect rows after the pass rates
    are computed. Each trace's check has `timeout_seconds` in all (see `check_math`). A trace whose `finish_reason`
    (a column `generate` writes) is "length" is incorrect with note "truncated" unless `keep_truncated`, which
    judges it by its text like any other.

    Problems are told apart by their id (`id_column`) when the input has one, else by their text. Rows that cannot
    be judged (a problem that is None or empty, a gold that is None or blank, a trace that is None) are refused
    when the input is read, each named by index (and id) and field; `skip_invalid_rows` leaves them out instead and
    counts them in the stage record. Rows of one id with different problems or golds (without ids: one problem
    text with two golds) are refused too. With `output_dir`, the run holds that folder's lock until it returns.
    """
    task = resolve_task(dataset, task)
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, (int, float)) or not timeout_seconds > 0:
        raise ValueError(
            f"timeout_seconds must be a number of seconds > 0 (the deadline for checking one trace), "
            f"got {timeout_seconds!r}."
        )
    with open_stage(
        dataset,
        "verify",
        output_dir=output_dir,
        fields={completion_column: "trace", problem_column: "text"},
        golds=gold_columns(task, answer_column),
        problem_column=problem_column,
        problem_set="traces",
        skip_invalid_rows=skip_invalid_rows,
        id_column=id_column,
    ) as (dataset, skipped):
        return _verify(
            dataset,
            task=task,
            completion_column=completion_column,
            answer_column=answer_column,
            problem_column=problem_column,
            keep_only_correct=keep_only_correct,
            keep_truncated=keep_truncated,
            timeout_seconds=timeout_seconds,
            output_dir=output_dir,
            shard_size=shard_size,
            overwrite=overwrite,
            skipped=skipped,
            id_column=id_column,
        )


def _verify(
    dataset,
    *,
    task,
    completion_column,
    answer_column,
    problem_column,
    keep_only_correct,
    keep_truncated,
    timeout_seconds,
    output_dir,
    shard_size,
    overwrite,
    skipped,
    id_column,
) -> Dataset:
    def check_batch(batch: dict) -> dict:
        checks = check_texts(batch, batch[completion_column], task, answer_column, timeout_seconds)
        if FINISH_COLUMN in batch and not keep_truncated:
            checks = judged_finished(checks, batch[FINISH_COLUMN])
        return {
            "correct": [c.correct for c in checks],
            "predicted_answer": [c.predicted for c in checks],
            "verify_method": [c.method for c in checks],
            "verify_note": [c.note for c in checks],
        }

    def process_shard(shard: Dataset, shard_index: int, progress) -> Dataset:
        checked = shard.map(
            check_batch,
            batched=True,
            keep_in_memory=True,
            load_from_cache_file=False,
            new_fingerprint=f"verify-{shard_index}",
        )
        progress.update(len(shard))
        return checked

    def finalize(checked: Dataset) -> tuple[Dataset, dict]:
        checked = with_pass_rates(checked, problem_column, id_column)
        stats = {**summarize_verification(checked, problem_column, id_column), **skipped}  # before filtering
        return (
            checked.filter(lambda correct: correct, input_columns="correct") if keep_only_correct else checked
        ), stats

    arguments = {
        "task": task,
        "completion_column": completion_column,
        "answer_column": answer_column,
        "problem_column": problem_column,
        "keep_only_correct": keep_only_correct,
        "keep_truncated": keep_truncated,
    }
    return run_stage(
        dataset,
        process_shard,
        stage="verify",
        arguments=arguments,
        output_dir=output_dir,
        shard_size=shard_size,
        finalize=finalize,
        overwrite=overwrite,
    )


def summarize_verification(checked: Dataset, problem_column: str = "problem", id_column: str = ID_COLUMN) -> dict:
    """Pass rate over traces, mean per-problem pass rate, problems solved at least once, flagged rows."""
    correct = list(checked["correct"])
    keys = problem_key_column(checked, problem_column, id_column)
    rates = dict(zip(checked[keys], checked["pass_rate"])) if "pass_rate" in checked.column_names else {}
    notes = Counter(n for n in checked["verify_note"] if n)
    return {
        "traces": len(correct),
        "pass_rate": sum(correct) / max(1, len(correct)),
        "problems": len(rates),
        "mean_problem_pass_rate": sum(rates.values()) / max(1, len(rates)),
        "problems_solved": sum(r > 0 for r in rates.values()),
        "flags": dict(notes),
    }
