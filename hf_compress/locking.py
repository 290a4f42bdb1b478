"""One run per output folder: an OS lock held for the life of the run (`output_lock`)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

from .durable import read_json, write_json_atomically


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
    return (
        f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: `{holder.get('command')}`"
    )


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
            f"{command}: the output folder {output_dir} is in use by {_describe_holder(read_json(holder_file))} "
            f"(lock {lock_file}). Nothing was sent or changed. Wait for that run to end, or choose another output "
            "folder. A run that was killed holds no lock: its lock went with its process."
        ) from None
    try:
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[key] = (lock, threading.get_ident())
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv) or command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "stage": command,
        }
        write_json_atomically(holder_file, holder)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(holder_file)
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS.pop(key, None)
        lock.release()
