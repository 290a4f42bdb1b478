"""Rows a stage cannot use, refused when the input is read (or left out and counted, on request), and data errors
across rows (one id on two problems, one problem with two golds)."""

from __future__ import annotations

import collections
import hashlib
import json
import logging

from datasets import Dataset

logger = logging.getLogger(__name__)


ID_COLUMN = "id"

_SHOWN_ROWS = 5


def _row_name(index: int, row_id) -> str:
    return f"row {index}" + (f" (id {row_id!r})" if row_id is not None else "")


def _value_problem(value, kind: str) -> str | None:
    """What is wrong with one field's value, or None. Kinds: `text` (a problem: non-empty text), `gold` (an answer:
    present and not blank), `trace` (a completion: text, possibly empty), `value` (present)."""
    if value is None:
        return "is None (missing)"
    if kind in ("text", "trace") and not isinstance(value, str):
        return f"is not text ({type(value).__name__} {value!r})"
    if kind in ("text", "gold") and isinstance(value, str) and not value.strip():
        return "is empty" if not value else "is blank (whitespace only)"
    if kind == "value" and isinstance(value, (list, str)) and not value:
        return "is empty"
    return None


def check_input_rows(
    dataset: Dataset,
    stage: str,
    fields: dict[str, str],
    *,
    skip_invalid_rows: bool = False,
    id_column: str = ID_COLUMN,
) -> tuple[Dataset, dict]:
    """Refuse rows whose fields the stage cannot use (`fields`: column -> kind, see `_value_problem`): a None or
    empty problem would be sent to the teacher as "None" or "", a None gold judged wrong without a word. The error
    names each row by index (and id, from `id_column` when the input has it) and the field, before anything is sent
    or written. With `skip_invalid_rows` such rows are left out instead: returns the remaining rows and statistics
    for the stage record (`invalid_rows_skipped`, `invalid_rows_by_column`); else the dataset as given and `{}`."""
    columns = list(dict.fromkeys([*fields, *([id_column] if id_column in dataset.column_names else [])]))
    bad: list[tuple[int, object, str, str]] = []  # (row, id, column, problem)
    bad_rows: set[int] = set()
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        ids = batch.get(id_column) if id_column in batch else None
        for offset in range(len(batch[columns[0]])):
            for column, kind in fields.items():
                problem = _value_problem(batch[column][offset], kind)
                if problem is not None:
                    bad.append((index + offset, ids[offset] if ids else None, column, problem))
                    bad_rows.add(index + offset)
        index += len(batch[columns[0]])
    if not bad:
        return dataset, ({"invalid_rows_skipped": 0, "invalid_rows_by_column": {}} if skip_invalid_rows else {})
    by_column = dict(collections.Counter(column for _, _, column, _ in bad))
    if not skip_invalid_rows:
        shown = "; ".join(
            f"{_row_name(row, row_id)}: `{column}` {problem}" for row, row_id, column, problem in bad[:_SHOWN_ROWS]
        )
        more = f" (and {len(bad) - _SHOWN_ROWS} more)" if len(bad) > _SHOWN_ROWS else ""
        raise ValueError(
            f"{stage}: {len(bad_rows)} input row(s) cannot be used: {shown}{more}. Nothing was sent or written. Fix "
            "the input, or pass --skip_invalid_rows (skip_invalid_rows=True) to leave such rows out; their count "
            "goes to the stage record (hf_compress_stage.json)."
        )
    if len(bad_rows) == len(dataset):
        raise ValueError(f"{stage}: every input row is invalid ({by_column} by column), so nothing is left to do.")
    logger.warning(
        "%s: leaving out %d invalid input row(s) (%s by column), first %s.",
        stage,
        len(bad_rows),
        by_column,
        "; ".join(f"{_row_name(r, i)}: `{c}` {p}" for r, i, c, p in bad[:_SHOWN_ROWS]),
    )
    kept = dataset.select([i for i in range(len(dataset)) if i not in bad_rows])
    return kept, {"invalid_rows_skipped": len(bad_rows), "invalid_rows_by_column": by_column}


def _text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def check_problem_set(
    dataset: Dataset,
    stage: str,
    problem_column: str,
    gold_columns: list[str],
    *,
    traces: bool,
    id_column: str = ID_COLUMN,
) -> None:
    """Data errors across rows, said at the input stage:

    - a problem set (`traces=False`, generate's input): an id on two rows; one problem text with two different
      golds;
    - traces (`traces=True`, n rows per problem): rows of one id with different problem texts or golds; without an
      id column, one problem text with two different golds (per-problem figures are then keyed by the text).
    """
    has_ids = id_column in dataset.column_names
    columns = list(dict.fromkeys([problem_column, *gold_columns, *([id_column] if has_ids else [])]))
    by_id: dict = {}  # id -> (first row, problem digest, gold)
    by_text: dict = {}  # problem digest -> (first row, id, gold)
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        for offset in range(len(batch[problem_column])):
            row = index + offset
            row_id = batch[id_column][offset] if has_ids else None
            text = _text_digest(str(batch[problem_column][offset]))
            gold = json.dumps([batch[c][offset] for c in gold_columns], default=str)
            gold_shown = ", ".join(repr(batch[c][offset]) for c in gold_columns)
            if has_ids:
                first = by_id.setdefault(row_id, (row, text, gold, gold_shown))
                if first[0] != row and not traces:
                    raise ValueError(
                        f"{stage}: the id {row_id!r} is on two rows, {first[0]} and {row}: each problem "
                        f"needs its own id (column `{id_column}`). Fix the input's ids."
                    )
                if first[0] != row and (first[1] != text or first[2] != gold):
                    what = "problem texts" if first[1] != text else f"golds ({first[3]} and {gold_shown})"
                    raise ValueError(
                        f"{stage}: rows {first[0]} and {row} have the same id {row_id!r} but different "
                        f"{what}. Fix the input's ids."
                    )
            if not traces or not has_ids:
                first = by_text.setdefault(text, (row, row_id, gold, gold_shown))
                if first[2] != gold:
                    raise ValueError(
                        f"{stage}: one problem text has two different gold answers: {_row_name(first[0], first[1])} "
                        f"has {first[3]}, {_row_name(row, row_id)} has {gold_shown} (`{problem_column}`: "
                        f"{_shorten(str(batch[problem_column][offset]))}). Fix the golds, or drop one of the rows."
                    )
        index += len(batch[problem_column])


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
