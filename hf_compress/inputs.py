"""Reading a stage's input: a `datasets` folder or a Hub id, a tokenizer, and the checks every stage makes of what it
reads (the columns it needs, rows to work on, an output folder apart from the input's)."""

from __future__ import annotations

import os

import datasets
from datasets import Dataset, load_dataset, load_from_disk

from .durable import read_json
from .validation import looks_local


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
        state = read_json(os.path.join(source, "state.json")) or {}
        if state.get("_data_files") == []:  # what `save_to_disk` writes for 0 rows; `load_from_disk` cannot read it
            raise ValueError(f"{source} holds a dataset with no rows; there is nothing to process.")
        loaded = load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source} has splits {list(loaded)}, not {split!r}; pass --split.")
            loaded = loaded[split]
        return loaded
    if os.path.exists(source):
        raise ValueError(
            f"{source} exists but is not a `datasets` folder (no state.json); write it with save_to_disk."
        )
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
