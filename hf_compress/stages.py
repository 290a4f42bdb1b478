"""The skeleton every pipeline stage shares: its opening (columns, rows, the lock), and running resumably into a
folder.

A stage's output folder is a `datasets` folder (`load_from_disk` opens it) plus `hf_compress_stage.json`,
which records the stage, a fingerprint of its input and arguments, and summary statistics. Re-running a
stage whose folder holds the same fingerprint returns the saved result without recomputing it.

Row-wise stages work shard by shard: each finished shard is saved under `<output>/.shards/` with an atomic
rename, so a killed process loses at most the shard it was working on, and a restart skips finished shards.
Writing is crash-safe (`hf_compress.durable`): a rerun detects a damaged or truncated shard or result and redoes it.

The concerns around it have modules of their own: reading inputs (`inputs`), crash-safe files (`durable`), the
output lock (`locking`) and row checks (`row_checks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable

import datasets
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from .constants import SHARDS_DIR, STAGE_FILE
from .durable import (
    file_digests,
    read_json,
    save_shard,
    save_to_disk,
    shard_is_intact,
    sync_folder,
    write_json_atomically,
)
from .inputs import check_stage_input, dataset_folder, require_columns
from .locking import output_lock
from .row_checks import ID_COLUMN, check_input_rows, check_problem_set
from .tasks import COUNTDOWN_COLUMNS

logger = logging.getLogger(__name__)


class StageMismatchError(RuntimeError):
    """The output folder holds results computed from other inputs or arguments."""


def dataset_fingerprint(dataset: Dataset, arguments: dict) -> str:
    """A hash of the dataset's content and the stage arguments: the same data built twice hashes the same
    (unlike `Dataset._fingerprint`, which is random for in-memory datasets)."""
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode())
    digest.update(json.dumps(dataset.features.to_dict(), sort_keys=True, default=str).encode())
    for batch in dataset.iter(batch_size=1000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def pipeline_records(dataset: Dataset) -> list[dict]:
    """The stage records of the folders this dataset came from, oldest stage first."""
    records, folder = [], dataset_folder(dataset)
    while folder and (record := read_stage_record(folder)) is not None and len(records) < 32:
        records.insert(0, record)
        folder = record.get("input_folder")
    return records


def read_stage_record(output_dir: str) -> dict | None:
    """The folder's stage record; None when it has none, or when the file is damaged (see `load_finished_stage`)."""
    return read_json(os.path.join(output_dir, STAGE_FILE))


def _clear_result(output_dir: str) -> None:
    """Remove a stage's saved result (record first), keeping its finished shards."""
    record = os.path.join(output_dir, STAGE_FILE)
    if os.path.exists(record):
        os.remove(record)
    for name in os.listdir(output_dir):
        if name != SHARDS_DIR:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def load_finished_stage(output_dir: str, stage: str, fingerprint: str, arguments: dict):
    """The saved result of this very run (same stage, input and arguments), or None when there is none or it is
    damaged (then it is removed, to be redone). A result of another run raises `StageMismatchError`."""
    if not os.path.exists(os.path.join(output_dir, STAGE_FILE)):
        return None
    record = read_stage_record(output_dir)
    if record is not None:
        check_same_run(record, stage, fingerprint, arguments, output_dir)
    damaged = record is None or ("files" in record and record["files"] != file_digests(output_dir))
    if not damaged:
        try:
            return load_from_disk(output_dir)
        except Exception as error:  # noqa: BLE001 - any unreadable result is redone, not trusted
            logger.warning("%s: cannot load %s (%s).", stage, output_dir, error)
    logger.warning("%s: the saved result in %s is damaged or incomplete; redoing it.", stage, output_dir)
    _clear_result(output_dir)
    return None


def _is_same_run(record: dict, run: dict) -> bool:
    return record.get("stage") == run["stage"] and record.get("fingerprint") == run["fingerprint"]


def check_same_run(record: dict, stage: str, fingerprint: str, arguments: dict, output_dir: str) -> None:
    if _is_same_run(record, {"stage": stage, "fingerprint": fingerprint}):
        return
    changed = sorted(
        k
        for k in set(arguments) | set(record.get("arguments", {}))
        if arguments.get(k) != record.get("arguments", {}).get(k)
    )
    reason = f"arguments changed: {changed}" if changed else "the input dataset changed"
    if record["stage"] != stage:
        reason = f"it holds the output of stage {record['stage']!r}"
    raise StageMismatchError(
        f"{output_dir} holds results of another {stage} run ({reason}). Choose another output folder, "
        "or pass overwrite=True (--overwrite) to discard them."
    )


def refuse_foreign_folder(output_dir: str, stage: str) -> bool:
    """Refuse a folder that holds anything but stage results; returns whether it holds any."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return False
    is_stage_folder = any(os.path.exists(os.path.join(output_dir, name)) for name in (STAGE_FILE, SHARDS_DIR))
    if not is_stage_folder:
        raise StageMismatchError(f"{output_dir} exists and is not a {stage} output folder; choose an empty folder.")
    return True


def prepare_output_folder(output_dir: str, stage: str, overwrite: bool) -> None:
    """Refuse a folder that holds anything but stage results; with `overwrite`, empty a stage folder."""
    if refuse_foreign_folder(output_dir, stage) and overwrite:
        shutil.rmtree(output_dir)


@contextlib.contextmanager
def quiet_datasets_progress():
    """Inner `Dataset.map` bars would interleave with the stage's own progress bar."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def run_stage(
    dataset: Dataset | None,
    process_shard: Callable[[Dataset, int, tqdm], Dataset] | None,
    *,
    stage: str,
    arguments: dict,
    output_dir: str | None,
    shard_size: int | None = None,
    finalize: Callable[[Dataset], tuple[Dataset, dict]] | None = None,
    overwrite: bool = False,
    extra_files: Callable[[Dataset | datasets.DatasetDict], dict[str, str]] | None = None,
) -> Dataset | datasets.DatasetDict:
    """Apply `process_shard(shard, shard_index, progress)` to consecutive shards of `shard_size` rows, then
    `finalize(concatenated) -> (result, statistics)` for what needs every row (per-problem rates).

    With an `output_dir`, finished shards are saved as they complete and the result is saved there with its
    statistics; a rerun with the same input and arguments resumes, or returns the saved result.
    `process_shard` advances `progress` by the number of input rows it has handled.

    Whole-dataset mode (`process_shard=None`): `finalize(dataset)` computes the whole result at once (a Dataset or a
    DatasetDict; `build`), saved with its record and `extra_files(result)` ({name: text}) but without shards;
    `dataset` may then be None (a result that depends on `arguments` alone: a recipe's built input).
    """
    finalize = finalize or (lambda result: (result, {}))
    if process_shard is None:
        return _run_whole_stage(
            dataset,
            finalize,
            stage=stage,
            arguments=arguments,
            output_dir=output_dir,
            overwrite=overwrite,
            extra_files=extra_files,
        )
    if shard_size is None or shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    check_stage_input(dataset, output_dir, stage)
    num_shards = max(1, math.ceil(len(dataset) / shard_size))
    shard_ranges = [range(i * shard_size, min(len(dataset), (i + 1) * shard_size)) for i in range(num_shards)]

    if output_dir is None:
        with tqdm(total=len(dataset), desc=stage, unit="row") as progress, quiet_datasets_progress():
            parts = [process_shard(dataset.select(r), i, progress) for i, r in enumerate(shard_ranges)]
            return finalize(concatenate_datasets(parts))[0]

    with stage_output_lock(dataset, output_dir, stage):  # one run per output folder, for as long as it runs
        fingerprint = dataset_fingerprint(dataset, {"stage": stage, **arguments})
        return _run_stage_in_folder(
            dataset,
            process_shard,
            stage=stage,
            arguments=arguments,
            output_dir=output_dir,
            overwrite=overwrite,
            fingerprint=fingerprint,
            shard_ranges=shard_ranges,
            finalize=finalize,
        )


def _run_whole_stage(dataset, finalize, *, stage, arguments, output_dir, overwrite, extra_files):
    if dataset is not None:
        check_stage_input(dataset, output_dir, stage)
    if output_dir is None:
        with quiet_datasets_progress():
            return finalize(dataset)[0]
    with stage_output_lock(dataset, output_dir, stage):
        fingerprint = (
            dataset_fingerprint(dataset, {"stage": stage, **arguments})
            if dataset is not None
            else hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode()).hexdigest()[:16]
        )
        prepare_output_folder(output_dir, stage, overwrite)
        finished = load_finished_stage(output_dir, stage, fingerprint, arguments)
        if finished is not None:
            logger.info("%s: %s already holds this result; skipping.", stage, output_dir)
            return finished
        with quiet_datasets_progress():
            result, stats = finalize(dataset)
        return save_stage(
            result,
            output_dir,
            stage=stage,
            fingerprint=fingerprint,
            arguments=arguments,
            stats=stats,
            input_folder=dataset_folder(dataset) if dataset is not None else None,
            extra_files=extra_files(result) if extra_files else None,
        )


def _run_stage_in_folder(
    dataset, process_shard, *, stage, arguments, output_dir, overwrite, fingerprint, shard_ranges, finalize
) -> Dataset:
    num_shards = len(shard_ranges)
    shard_dir = os.path.join(output_dir, SHARDS_DIR)
    prepare_output_folder(output_dir, stage, overwrite)
    finished = load_finished_stage(output_dir, stage, fingerprint, arguments)
    if finished is not None:
        logger.info("%s: %s already holds this result; skipping.", stage, output_dir)
        shutil.rmtree(shard_dir, ignore_errors=True)  # left behind if a run was killed right after saving
        return finished
    os.makedirs(shard_dir, exist_ok=True)
    shard_record = {"stage": stage, "fingerprint": fingerprint, "arguments": arguments, "num_shards": num_shards}
    _start_or_resume_shards(shard_dir, shard_record, output_dir)

    shard_paths = [os.path.join(shard_dir, f"shard-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    for path in shard_paths:
        if os.path.exists(path) and not shard_is_intact(path):
            logger.warning("%s: %s is damaged or incomplete; redoing it.", stage, path)
            shutil.rmtree(path)
    done_rows = sum(len(r) for r, p in zip(shard_ranges, shard_paths) if os.path.exists(p))
    with tqdm(total=len(dataset), initial=done_rows, desc=stage, unit="row") as progress, quiet_datasets_progress():
        for index, (rows, path) in enumerate(zip(shard_ranges, shard_paths)):
            if os.path.exists(path):
                continue
            save_shard(process_shard(dataset.select(rows), index, progress), path)

        result, stats = finalize(concatenate_datasets([load_from_disk(p) for p in shard_paths]))
    return save_stage(
        result,
        output_dir,
        stage=stage,
        fingerprint=fingerprint,
        arguments=arguments,
        stats=stats,
        input_folder=dataset_folder(dataset),
        cleanup=shard_dir,
    )


def _start_or_resume_shards(shard_dir: str, shard_record: dict, output_dir: str) -> None:
    path = os.path.join(shard_dir, "shards.json")
    previous = read_json(path)
    if previous is None and os.path.exists(path):  # damaged: its shards cannot be attributed to a run
        logger.warning("%s is damaged; discarding the shards next to it.", path)
        shutil.rmtree(shard_dir)
        os.makedirs(shard_dir)
    if previous is not None and not any(name.startswith("shard-") for name in os.listdir(shard_dir)):
        # A run that finished no shard (e.g. it failed before its teacher answered) left nothing to protect: a
        # retry with corrected arguments starts clean instead of refusing them.
        if not _is_same_run(previous, shard_record):
            logger.info(
                "%s: %s holds no finished shard of an earlier run with other arguments; starting afresh.",
                shard_record["stage"],
                output_dir,
            )
            previous = None
    if previous is not None:
        check_same_run(
            previous, shard_record["stage"], shard_record["fingerprint"], shard_record["arguments"], output_dir
        )
        logger.info("%s: resuming in %s", shard_record["stage"], output_dir)
    else:
        write_json_atomically(path, shard_record)
    for name in os.listdir(shard_dir):  # half-written shards of a killed process
        if name.startswith("tmp-"):
            shutil.rmtree(os.path.join(shard_dir, name))


def save_stage(
    result: Dataset,
    output_dir: str,
    *,
    stage: str,
    fingerprint: str,
    arguments: dict,
    stats: dict,
    input_folder: str | None = None,
    cleanup: str | None = None,
    extra_files: dict[str, str] | None = None,
) -> Dataset:
    """Save a finished stage result (a Dataset or DatasetDict, plus `extra_files` {name: text}) with its record,
    then reopen it from disk. The record, written last and atomically, lists the digests of the saved files."""
    os.makedirs(output_dir, exist_ok=True)
    _clear_result(output_dir)  # a damaged or interrupted earlier save
    with quiet_datasets_progress():
        save_to_disk(result, output_dir)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(output_dir, name), "w") as f:
            f.write(text)
    record = {
        "stage": stage,
        "fingerprint": fingerprint,
        "arguments": arguments,
        "stats": stats,
        "input_folder": input_folder,
        "files": file_digests(output_dir),
    }
    sync_folder(output_dir)
    write_json_atomically(os.path.join(output_dir, STAGE_FILE), record)  # the commit point
    saved = load_from_disk(output_dir)
    if cleanup:
        shutil.rmtree(cleanup)
    return saved


@contextlib.contextmanager
def stage_output_lock(dataset: Dataset | None, output_dir: str | None, stage: str):
    """A stage's checks of its output folder, then its lock (see `output_lock`): an output apart from the input and
    not a folder of other files is checked before even the lock file is written next to it."""
    if dataset is not None:
        check_stage_input(dataset, output_dir, stage)
    if output_dir is not None:
        refuse_foreign_folder(output_dir, stage)
    with output_lock(output_dir, stage):
        yield


@contextlib.contextmanager
def open_stage(
    dataset: Dataset,
    stage: str,
    *,
    output_dir: str | None,
    fields: dict[str, str],
    golds: list[str] = (),
    also_required: tuple[str, ...] = (),
    added_columns: tuple[str, ...] = (),
    problem_column: str | None = None,
    problem_set: str | None = None,
    skip_invalid_rows: bool = False,
    id_column: str = ID_COLUMN,
    hint: str = "",
):
    """The opening every stage shares, in the order that writes nothing for a refused input: the columns it reads
    (`fields`: column -> kind, see `row_checks.check_input_rows`; and the gold columns `golds`, from
    `tasks.gold_columns`; and `also_required`, present but not checked row by row) are present and those it adds
    (`added_columns`) are not; its rows are usable (or left out with `skip_invalid_rows`); with `problem_set`
    ("problems": one row per problem; "traces": n rows per problem) the rows agree across the set
    (`row_checks.check_problem_set`); then the output folder is checked and locked for the life of the block. Yields `(dataset, skipped)`: the rows to work on and the skipped-row statistics for
    the stage record."""
    golds = list(golds)
    require_columns(dataset, list(dict.fromkeys([*fields, *golds, *also_required])), stage, hint)
    clashing = [column for column in added_columns if column in dataset.column_names]
    if clashing:
        raise ValueError(f"{stage} adds the columns {clashing}, which the input already has; rename or drop them.")
    gold_kind = "value" if tuple(golds) == COUNTDOWN_COLUMNS else "gold"  # Countdown: numbers and a target
    kinds = {**fields, **dict.fromkeys(golds, gold_kind)}
    dataset, skipped = check_input_rows(
        dataset, stage, kinds, skip_invalid_rows=skip_invalid_rows, id_column=id_column
    )
    if problem_set is not None:
        if problem_set not in ("problems", "traces"):
            raise ValueError(f"problem_set must be 'problems' or 'traces', got {problem_set!r}.")
        check_problem_set(dataset, stage, problem_column, golds, traces=problem_set == "traces", id_column=id_column)
    with stage_output_lock(dataset, output_dir, stage):  # after the row checks: a refused input writes nothing
        yield dataset, skipped
