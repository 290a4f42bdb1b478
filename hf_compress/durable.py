"""Crash-safe writing: files are written, flushed to disk (fsync), then published by one atomic step (the rename of
a shard folder; the write-then-rename of a JSON record). Shards and stage records list the size and SHA-256 of every
file they hold (`file_digests`), so a reader detects a damaged or truncated folder (power loss, a full disk) and redoes
it instead of trusting it."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import datasets
from datasets import Dataset

from .constants import SHARD_MANIFEST, SHARDS_DIR, STAGE_FILE

logger = logging.getLogger(__name__)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is damaged (not valid JSON).", path)
        return None


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
    manifest = read_json(os.path.join(path, SHARD_MANIFEST))
    return manifest is not None and manifest.get("files") == file_digests(path)
