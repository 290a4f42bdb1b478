"""Which task a dataset's answers belong to, and the columns that hold its gold answers: the one place that knows
Countdown's gold columns (`numbers` and `target`) and the math task's answer column."""

from __future__ import annotations

from .constants import TASKS

COUNTDOWN_COLUMNS = ("numbers", "target")


def resolve_task(dataset, task: str) -> str:
    """`task` itself, or for "auto" the task of `dataset` (anything with `column_names`): Countdown when it has the
    `numbers` and `target` columns, math otherwise."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
    if task == "auto":
        return "countdown" if set(COUNTDOWN_COLUMNS) <= set(dataset.column_names) else "math"
    return task


def gold_columns(task: str, answer_column: str = "answer") -> list[str]:
    """The columns holding a row's gold answer for `task` (resolved: "math" or "countdown")."""
    return list(COUNTDOWN_COLUMNS) if task == "countdown" else [answer_column]


def gold_references(task: str, gold: dict, answer_column: str = "answer") -> list:
    """The gold answers of the rows `gold` (column: values) as the `answer_accuracy` metric takes them: strings, or
    `{"numbers": [...], "target": n}` for Countdown."""
    if task == "countdown":
        return [{"numbers": list(n), "target": t} for n, t in zip(*(gold[c] for c in COUNTDOWN_COLUMNS))]
    return [str(answer) for answer in gold[answer_column]]
