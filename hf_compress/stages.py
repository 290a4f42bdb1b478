"""What every pipeline stage shares: reading inputs, checking columns, and running resumably into a folder.

A stage's output folder is a `datasets` folder (`load_from_disk` opens it) plus `hf_compress_stage.json`,
which records the stage, a fingerprint of its input and arguments, and summary statistics. Re-running a
stage whose folder holds the same fingerprint returns the saved result without recomputing it.

Row-wise stages work shard by shard: each finished shard is saved under `<output>/.shards/` with an atomic
rename, so a killed process loses at most the shard it was working on, and a restart skips finished shards.
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
from datasets import Dataset, concatenate_datasets, load_dataset, load_from_disk
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

STAGE_FILE = "hf_compress_stage.json"
SHARDS_DIR = ".shards"


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
        loaded = load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source} has splits {list(loaded)}, not {split!r}; pass --split.")
            loaded = loaded[split]
        return loaded
    if os.path.exists(source):
        raise ValueError(f"{source} exists but is not a `datasets` folder (no state.json); write it with save_to_disk.")
    return load_dataset(source, split=split)


def load_tokenizer(tokenizer):
    """A tokenizer object as given, or loaded from a path or Hub id (transformers imported only then)."""
    if not isinstance(tokenizer, str):
        return tokenizer
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


def pipeline_records(dataset: Dataset) -> list[dict]:
    """The stage records of the folders this dataset came from, oldest stage first."""
    records, folder = [], dataset_folder(dataset)
    while folder and (record := read_stage_record(folder)) is not None and len(records) < 32:
        records.insert(0, record)
        folder = record.get("input_folder")
    return records


def read_stage_record(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, STAGE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_same_run(record: dict, stage: str, fingerprint: str, arguments: dict, output_dir: str) -> None:
    if record["stage"] == stage and record["fingerprint"] == fingerprint:
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


def prepare_output_folder(output_dir: str, stage: str, overwrite: bool) -> None:
    """Refuse a folder that holds anything but stage results; with `overwrite`, empty a stage folder."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    is_stage_folder = read_stage_record(output_dir) is not None or os.path.isdir(os.path.join(output_dir, SHARDS_DIR))
    if not is_stage_folder:
        raise StageMismatchError(f"{output_dir} exists and is not a {stage} output folder; choose an empty folder.")
    if overwrite:
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
    num_shards = max(1, math.ceil(len(dataset) / shard_size))
    fingerprint = dataset_fingerprint(dataset, {"stage": stage, **arguments})
    shard_ranges = [range(i * shard_size, min(len(dataset), (i + 1) * shard_size)) for i in range(num_shards)]

    if output_dir is None:
        with tqdm(total=len(dataset), desc=stage, unit="row") as progress, quiet_datasets_progress():
            parts = [process_shard(dataset.select(r), i, progress) for i, r in enumerate(shard_ranges)]
            return finalize(concatenate_datasets(parts))[0]

    shard_dir = os.path.join(output_dir, SHARDS_DIR)
    prepare_output_folder(output_dir, stage, overwrite)
    record = read_stage_record(output_dir)
    if record is not None:
        check_same_run(record, stage, fingerprint, arguments, output_dir)
        logger.info("%s: %s already holds this result; skipping.", stage, output_dir)
        shutil.rmtree(shard_dir, ignore_errors=True)  # left behind if a run was killed right after saving
        return load_from_disk(output_dir)
    os.makedirs(shard_dir, exist_ok=True)
    shard_record = {"stage": stage, "fingerprint": fingerprint, "arguments": arguments, "num_shards": num_shards}
    _start_or_resume_shards(shard_dir, shard_record, output_dir)

    shard_paths = [os.path.join(shard_dir, f"shard-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    done_rows = sum(len(r) for r, p in zip(shard_ranges, shard_paths) if os.path.exists(p))
    with tqdm(total=len(dataset), initial=done_rows, desc=stage, unit="row") as progress, quiet_datasets_progress():
        for index, (rows, path) in enumerate(zip(shard_ranges, shard_paths)):
            if os.path.exists(path):
                continue
            part = process_shard(dataset.select(rows), index, progress)
            temporary = os.path.join(shard_dir, f"tmp-{index:05d}-{os.getpid()}")
            part.save_to_disk(temporary)
            os.replace(temporary, path)  # atomic: a shard folder either exists complete or not at all

        result, stats = finalize(concatenate_datasets([load_from_disk(p) for p in shard_paths]))
    return save_stage(result, output_dir, stage=stage, fingerprint=fingerprint, arguments=arguments, stats=stats,
                      input_folder=dataset_folder(dataset), cleanup=shard_dir)


def _start_or_resume_shards(shard_dir: str, shard_record: dict, output_dir: str) -> None:
    path = os.path.join(shard_dir, "shards.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        check_same_run(previous, shard_record["stage"], shard_record["fingerprint"], shard_record["arguments"], output_dir)
        logger.info("%s: resuming in %s", shard_record["stage"], output_dir)
    else:
        with open(path, "w") as f:
            json.dump(shard_record, f, indent=2, default=str)
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
) -> Dataset:
    """Save a finished stage result (a Dataset or DatasetDict) with its record, then reopen it from disk."""
    with quiet_datasets_progress():
        result.save_to_disk(output_dir)
    record = {"stage": stage, "fingerprint": fingerprint, "arguments": arguments, "stats": stats,
              "input_folder": input_folder}
    with open(os.path.join(output_dir, STAGE_FILE), "w") as f:
        json.dump(record, f, indent=2, default=str)
    saved = load_from_disk(output_dir)
    if cleanup:
        shutil.rmtree(cleanup)
    return saved
