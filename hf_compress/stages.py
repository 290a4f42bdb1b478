"""What every pipeline stage shares: reading inputs, checking columns, and running resumably into a folder.

A stage's output folder is a `datasets` folder (`load_from_disk` opens it) plus `hf_compress_stage.json`,
which records the stage, a fingerprint of its input and arguments, and summary statistics. Re-running a
stage whose folder holds the same fingerprint returns the saved result without recomputing it.

Row-wise stages work shard by shard: each finished shard is saved under `<output>/.shards/` with an atomic
rename, so a killed process loses at most the shard it was working on, and a restart skips finished shards.

Crash safety: shards and results are written, flushed to disk (fsync), then published by one atomic step (the
rename of a shard folder; the write-then-rename of `hf_compress_stage.json`, which is written last). Both record
the size and SHA-256 of every file they hold, so a rerun detects a damaged or truncated shard or result (power
loss, a full disk) and redoes it instead of trusting it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable

import datasets
from datasets import Dataset, concatenate_datasets, load_dataset, load_from_disk
from tqdm.auto import tqdm

from .validation import looks_local

logger = logging.getLogger(__name__)

STAGE_FILE = "hf_compress_stage.json"
SHARDS_DIR = ".shards"
SHARD_MANIFEST = "hf_compress_shard.json"


class StageMismatchError(RuntimeError):
    """The output folder holds results computed from other inputs or arguments."""


def require_columns(dataset: Dataset, columns: list[str], stage: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{stage} needs the column(s) {missing}, but the dataset has {dataset.column_names}. "
            + (hint or "Rename yours with `dataset.rename_column(old, new)` or pass the matching *_column argument.")
        )


def load_input(source: str, split: str = "train") -> Dataset:
    """A `datasets` folder written by `save_to_disk` (or by a previous stage), or a Hub dataset id."""
    if os.path.isdir(source) and (
        os.path.exists(os.path.join(source, "state.json")) or os.path.exists(os.path.join(source, "dataset_dict.json"))
    ):
        state = _read_json(os.path.join(source, "state.json")) or {}
        if state.get("_data_files") == []:  # what `save_to_disk` writes for 0 rows; `load_from_disk` cannot read it
            raise ValueError(f"{source} holds a dataset with no rows; there is nothing to process.")
        loaded = load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source} has splits {list(loaded)}, not {split!r}; pass --split.")
            loaded = loaded[split]
        return loaded
    if os.path.exists(source):
        raise ValueError(f"{source} exists but is not a `datasets` folder (no state.json); write it with save_to_disk.")
    not_here = f"{source} is not a folder here (a typo, or another working directory?)"
    if looks_local(source):
        raise FileNotFoundError(f"{not_here}.")
    try:
        return load_dataset(source, split=split)
    except OSError as error:  # not found on the Hub, or no connection (e.g. offline)
        raise FileNotFoundError(f"{not_here}, and the Hub did not give it as a dataset id: {error}") from error


def load_tokenizer(tokenizer):
    """A tokenizer object as given, or loaded from a path or Hub id (transformers imported only then)."""
    if not isinstance(tokenizer, str):
        return tokenizer
    if looks_local(tokenizer) and not os.path.isdir(tokenizer):
        raise FileNotFoundError(f"tokenizer {tokenizer} is not a folder here (a typo, or another working directory?).")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer)


def dataset_fingerprint(dataset: Dataset, arguments: dict) -> str:
    """A hash of the dataset's content and the stage arguments: the same data built twice hashes the same
    (unlike `Dataset._fingerprint`, which is random for in-memory datasets)."""
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode())
    digest.update(json.dumps(dataset.features.to_dict(), sort_keys=True, default=str).encode())
    for batch in dataset.iter(batch_size=1000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def dataset_folder(dataset: Dataset) -> str | None:
    """The folder a dataset was loaded from with `load_from_disk`, if any (None for in-memory datasets)."""
    files = dataset.cache_files
    return os.path.dirname(os.path.abspath(files[0]["filename"])) if files else None


def input_root(dataset: Dataset) -> str | None:
    """The folder a loaded dataset belongs to: its own, or the `DatasetDict` folder above it (one split of it)."""
    folder = dataset_folder(dataset)
    if folder and os.path.exists(os.path.join(os.path.dirname(folder), "dataset_dict.json")):
        return os.path.dirname(folder)
    return folder


def check_separate_folders(dataset: Dataset, output_dir: str, stage: str) -> None:
    """Refuse an output folder that is, holds, or lies inside the input's folder: saving there (or emptying it with
    `overwrite`) would destroy the input."""
    source = input_root(dataset)
    if source is None:
        return
    source, target = os.path.realpath(source), os.path.realpath(output_dir)
    if source == target or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        relation = "is" if source == target else "lies inside" if target.startswith(source + os.sep) else "contains"
        raise ValueError(
            f"{stage}: the output folder {output_dir} {relation} the input folder {source}; writing there would "
            "destroy the input. Choose an output folder outside the input (e.g. a sibling folder)."
        )


def check_not_empty(dataset: Dataset, stage: str) -> None:
    if len(dataset) == 0:
        source = input_root(dataset)
        raise ValueError(
            f"{stage}: the input{f' ({source})' if source else ''} has no rows, so there is nothing to do. If an "
            "earlier stage filtered every row out (e.g. verify --keep_only_correct kept no trace), look at its "
            "statistics in its hf_compress_stage.json."
        )


def check_stage_input(dataset: Dataset, output_dir: str | None, stage: str) -> None:
    """What every stage checks before doing or writing anything: rows to work on, and an output folder apart from
    the input's."""
    check_not_empty(dataset, stage)
    if output_dir is not None:
        check_separate_folders(dataset, output_dir, stage)


def pipeline_records(dataset: Dataset) -> list[dict]:
    """The stage records of the folders this dataset came from, oldest stage first."""
    records, folder = [], dataset_folder(dataset)
    while folder and (record := read_stage_record(folder)) is not None and len(records) < 32:
        records.insert(0, record)
        folder = record.get("input_folder")
    return records


def read_stage_record(output_dir: str) -> dict | None:
    """The folder's stage record; None when it has none, or when the file is damaged (see `load_finished_stage`)."""
    return _read_json(os.path.join(output_dir, STAGE_FILE))


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is damaged (not valid JSON).", path)
        return None


# ----------------------------------------------------------------------------------------------------------
# Crash-safe writing: flush to disk, then publish with one atomic rename; verify file digests when reading back
# ----------------------------------------------------------------------------------------------------------


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_folder(folder: str) -> None:
    """Flush every file and directory under `folder` to disk, so that a rename done afterwards publishes data
    that survives a power loss."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def write_json_atomically(path: str, content: dict) -> None:
    """Write, fsync, then rename over `path`: a crash leaves the old file or the new one, never a truncated one."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(content, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync(os.path.dirname(os.path.abspath(path)))


def file_digests(folder: str) -> dict[str, list]:
    """`{relative path: [size, sha256]}` of the data files under `folder` (stage bookkeeping files excluded)."""
    digests = {}
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if d != SHARDS_DIR)
        for name in sorted(files):
            if name in (STAGE_FILE, SHARD_MANIFEST) or ".tmp-" in name:
                continue
            path = os.path.join(root, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digests[os.path.relpath(path, folder)] = [os.path.getsize(path), digest.hexdigest()]
    return digests


def save_to_disk(result: Dataset | datasets.DatasetDict, path: str) -> None:
    """`save_to_disk` that writes one (empty) data file for a dataset without rows: by default `datasets` writes
    none, and then cannot load the folder back."""
    if isinstance(result, datasets.DatasetDict):
        result.save_to_disk(path, num_shards={name: 1 for name, split in result.items() if len(split) == 0})
    else:
        result.save_to_disk(path, num_shards=1 if len(result) == 0 else None)


def save_shard(part: Dataset, path: str) -> None:
    """Save a finished shard so that `path` either holds it complete (with a manifest of its files) or not at all."""
    temporary = os.path.join(os.path.dirname(path), f"tmp-{os.path.basename(path)}-{os.getpid()}")
    save_to_disk(part, temporary)
    with open(os.path.join(temporary, SHARD_MANIFEST), "w") as f:
        json.dump({"rows": len(part), "files": file_digests(temporary)}, f, indent=2)
    sync_folder(temporary)
    os.replace(temporary, path)
    _fsync(os.path.dirname(path))


def shard_is_intact(path: str) -> bool:
    """Whether a shard folder holds exactly the files its manifest lists (sizes and SHA-256 match)."""
    manifest = _read_json(os.path.join(path, SHARD_MANIFEST))
    return manifest is not None and manifest.get("files") == file_digests(path)


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
    changed = sorted(k for k in set(arguments) | set(record.get("arguments", {}))
                     if arguments.get(k) != record.get("arguments", {}).get(k))
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
    dataset: Dataset,
    process_shard: Callable[[Dataset, int, tqdm], Dataset],
    *,
    stage: str,
    arguments: dict,
    output_dir: str | None,
    shard_size: int,
    finalize: Callable[[Dataset], tuple[Dataset, dict]] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Apply `process_shard(shard, shard_index, progress)` to consecutive shards of `shard_size` rows, then
    `finalize(concatenated) -> (result, statistics)` for what needs every row (per-problem rates).

    With an `output_dir`, finished shards are saved as they complete and the result is saved there with its
    statistics; a rerun with the same input and arguments resumes, or returns the saved result.
    `process_shard` advances `progress` by the number of input rows it has handled.
    """
    finalize = finalize or (lambda result: (result, {}))
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    check_stage_input(dataset, output_dir, stage)
    num_shards = max(1, math.ceil(len(dataset) / shard_size))
    shard_ranges = [range(i * shard_size, min(len(dataset), (i + 1) * shard_size)) for i in range(num_shards)]

    if output_dir is None:
        with tqdm(total=len(dataset), desc=stage, unit="row") as progress, quiet_datasets_progress():
            parts = [process_shard(dataset.select(r), i, progress) for i, r in enumerate(shard_ranges)]
            return finalize(concatenate_datasets(parts))[0]

    refuse_foreign_folder(output_dir, stage)  # before writing even its lock file next to it
    with output_lock(output_dir, stage):  # one run per output folder, for as long as it runs
        fingerprint = dataset_fingerprint(dataset, {"stage": stage, **arguments})
        return _run_stage_in_folder(dataset, process_shard, stage=stage, arguments=arguments, output_dir=output_dir,
                                    overwrite=overwrite, fingerprint=fingerprint, shard_ranges=shard_ranges,
                                    finalize=finalize)


def _run_stage_in_folder(dataset, process_shard, *, stage, arguments, output_dir, overwrite, fingerprint,
                         shard_ranges, finalize) -> Dataset:
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
    return save_stage(result, output_dir, stage=stage, fingerprint=fingerprint, arguments=arguments, stats=stats,
                      input_folder=dataset_folder(dataset), cleanup=shard_dir)


def _start_or_resume_shards(shard_dir: str, shard_record: dict, output_dir: str) -> None:
    path = os.path.join(shard_dir, "shards.json")
    previous = _read_json(path)
    if previous is None and os.path.exists(path):  # damaged: its shards cannot be attributed to a run
        logger.warning("%s is damaged; discarding the shards next to it.", path)
        shutil.rmtree(shard_dir)
        os.makedirs(shard_dir)
    if previous is not None and not any(name.startswith("shard-") for name in os.listdir(shard_dir)):
        # A run that finished no shard (e.g. it failed before its teacher answered) left nothing to protect: a
        # retry with corrected arguments starts clean instead of refusing them.
        if not _is_same_run(previous, shard_record):
            logger.info("%s: %s holds no finished shard of an earlier run with other arguments; starting afresh.",
                        shard_record["stage"], output_dir)
            previous = None
    if previous is not None:
        check_same_run(previous, shard_record["stage"], shard_record["fingerprint"], shard_record["arguments"], output_dir)
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
    record = {"stage": stage, "fingerprint": fingerprint, "arguments": arguments, "stats": stats,
              "input_folder": input_folder, "files": file_digests(output_dir)}
    sync_folder(output_dir)
    write_json_atomically(os.path.join(output_dir, STAGE_FILE), record)  # the commit point
    saved = load_from_disk(output_dir)
    if cleanup:
        shutil.rmtree(cleanup)
    return saved


# ----------------------------------------------------------------------------------------------------------
# One run per output folder: an OS lock held for the life of the run
# ----------------------------------------------------------------------------------------------------------


class OutputFolderInUseError(ValueError):
    """Another run holds the output folder's lock. A ValueError like every other refusal of the arguments given (on
    the command line: exit code 2)."""


_HELD_LOCKS: dict[str, tuple] = {}  # folder (real path) -> (FileLock, thread id) held by this process
_HELD_LOCKS_GUARD = threading.Lock()


def lock_paths(output_dir: str) -> tuple[str, str]:
    """(lock file, holder file) of an output folder. Both sit next to the folder, not in it, so that the folder holds
    only its results (and `overwrite` can empty it while the lock is held): `out/.generate.hf-compress.lock` (left
    in place, empty, after the run) and `out/.generate.hf-compress.holder.json` (who holds it; removed at the end)."""
    folder = os.path.realpath(output_dir)  # one lock whichever path (a link, `..`) names the folder
    parent, name = os.path.dirname(folder), os.path.basename(folder)
    return os.path.join(parent, f".{name}.hf-compress.lock"), os.path.join(parent, f".{name}.hf-compress.holder.json")


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not said which yet)"
    return (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: "
            f"`{holder.get('command')}`")


@contextlib.contextmanager
def output_lock(output_dir: str | None, command: str):
    """Hold the lock on `output_dir` while the block runs: a second run (another process or thread) that wants the
    same folder is refused at once with `OutputFolderInUseError`, naming the folder and the run that holds it, having
    sent and changed nothing. The lock is the OS's (filelock's `FileLock`: fcntl on Unix), so the kernel releases it
    when the holder dies, even by SIGKILL: a killed run never blocks the next one. Nested use in one thread (a stage
    inside `run`, a stage function calling `run_stage`) re-enters. `None` (no output folder) locks nothing."""
    if output_dir is None:
        yield
        return
    from filelock import FileLock, Timeout

    key = os.path.realpath(output_dir)
    with _HELD_LOCKS_GUARD:
        held = _HELD_LOCKS.get(key)
    if held is not None and held[1] == threading.get_ident():
        yield  # this thread holds it already
        return
    lock_file, holder_file = lock_paths(output_dir)
    os.makedirs(os.path.dirname(lock_file), exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputFolderInUseError(
            f"{command}: the output folder {output_dir} is in use by {_describe_holder(_read_json(holder_file))} "
            f"(lock {lock_file}). Nothing was sent or changed. Wait for that run to end, or choose another output "
            "folder. A run that was killed holds no lock: its lock went with its process."
        ) from None
    try:
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[key] = (lock, threading.get_ident())
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv) or command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "stage": command}
        write_json_atomically(holder_file, holder)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(holder_file)
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS.pop(key, None)
        lock.release()


@contextlib.contextmanager
def stage_output_lock(dataset: Dataset, output_dir: str | None, stage: str):
    """A stage's checks of its output folder, then its lock (see `output_lock`): an output apart from the input and
    not a folder of other files is checked before even the lock file is written next to it."""
    check_stage_input(dataset, output_dir, stage)
    if output_dir is not None:
        refuse_foreign_folder(output_dir, stage)
    with output_lock(output_dir, stage):
        yield


# ----------------------------------------------------------------------------------------------------------
# Rows a stage cannot use: refused when the input is read (or left out and counted, on request)
# ----------------------------------------------------------------------------------------------------------

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


def check_input_rows(dataset: Dataset, stage: str, fields: dict[str, str], *, skip_invalid_rows: bool = False,
                     id_column: str = ID_COLUMN) -> tuple[Dataset, dict]:
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
        shown = "; ".join(f"{_row_name(row, row_id)}: `{column}` {problem}" for row, row_id, column, problem
                          in bad[:_SHOWN_ROWS])
        more = f" (and {len(bad) - _SHOWN_ROWS} more)" if len(bad) > _SHOWN_ROWS else ""
        raise ValueError(
            f"{stage}: {len(bad_rows)} input row(s) cannot be used: {shown}{more}. Nothing was sent or written. Fix "
            "the input, or pass --skip_invalid_rows (skip_invalid_rows=True) to leave such rows out; their count "
            "goes to the stage record (hf_compress_stage.json)."
        )
    if len(bad_rows) == len(dataset):
        raise ValueError(f"{stage}: every input row is invalid ({by_column} by column), so nothing is left to do.")
    logger.warning("%s: leaving out %d invalid input row(s) (%s by column), first %s.", stage, len(bad_rows),
                   by_column, "; ".join(f"{_row_name(r, i)}: `{c}` {p}" for r, i, c, p in bad[:_SHOWN_ROWS]))
    kept = dataset.select([i for i in range(len(dataset)) if i not in bad_rows])
    return kept, {"invalid_rows_skipped": len(bad_rows), "invalid_rows_by_column": by_column}


def _text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def check_problem_set(dataset: Dataset, stage: str, problem_column: str, gold_columns: list[str], *,
                      traces: bool, id_column: str = ID_COLUMN) -> None:
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
                    raise ValueError(f"{stage}: the id {row_id!r} is on two rows, {first[0]} and {row}: each problem "
                                     f"needs its own id (column `{id_column}`). Fix the input's ids.")
                if first[0] != row and (first[1] != text or first[2] != gold):
                    what = "problem texts" if first[1] != text else f"golds ({first[3]} and {gold_shown})"
                    raise ValueError(f"{stage}: rows {first[0]} and {row} have the same id {row_id!r} but different "
                                     f"{what}. Fix the input's ids.")
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
