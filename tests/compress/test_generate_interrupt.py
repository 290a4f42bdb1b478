"""Ctrl-C during `hf-compress generate` against a server that stops answering: one press, a prompt exit, finished
shards kept, and a resume that completes with nothing lost or duplicated."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from datasets import load_from_disk

from hf_compress.constants import SHARDS_DIR
from kit.tiny import make_task_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_compress_command() -> list[str]:
    """The console script as users run it (next to this interpreter), else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]


def finished_shards(output_dir):
    shard_dir = os.path.join(output_dir, SHARDS_DIR)
    names = os.listdir(shard_dir) if os.path.isdir(shard_dir) else []
    return sorted(os.path.join(shard_dir, n) for n in names if n.startswith("shard-"))


@pytest.mark.slow  # two runs of the console script: about 20 s on 2 cores
def test_one_ctrl_c_stops_a_run_against_a_hanging_server_and_the_rerun_resumes(teacher_server, tmp_path):
    problems = make_task_dataset("arithmetic", 8, seed=0).select_columns(["problem", "answer"])
    problems.save_to_disk(str(tmp_path / "problems"))
    output = str(tmp_path / "g")
    # The defaults a real run has (600 s timeout, 5 retries): Ctrl-C must not wait for them.
    command = [
        *hf_compress_command(),
        "generate",
        "--input",
        str(tmp_path / "problems"),
        "--output",
        output,
        "--backend",
        "openai",
        "--model",
        "teacher",
        "--base_url",
        teacher_server.base_url,
        "--n",
        "2",
        "--shard_size",
        "2",
        "--problems_per_call",
        "2",
        "--max_concurrency",
        "2",
    ]
    teacher_server.behaviour.hang_after = 8  # two shards (2 problems x 2 samples each), then no more answers
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    # As from a terminal: Ctrl-C's default action. A test run started as a background job (`cmd &` in a
    # non-interactive shell) ignores SIGINT, and a child inherits that, so Python would never see the signal.
    process = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while len(finished_shards(output)) < 2 or teacher_server.behaviour.requests < 10:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the generating process made no progress"
            time.sleep(0.02)
        time.sleep(0.3)  # the hanging requests are in flight
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)  # one press
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        exit_seconds = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr = process.stderr.read().decode()
        process.stderr.close()
    assert exit_seconds < 5, f"took {exit_seconds:.1f} s to stop after Ctrl-C"
    assert process.returncode in (130, -signal.SIGINT), stderr[-2000:]

    kept = finished_shards(output)
    assert len(kept) == 2 and sum(len(load_from_disk(path)) for path in kept) == 8  # finished shards intact

    teacher_server.behaviour.reset()  # the server answers again: the same command resumes
    subprocess.run(
        command, env=env, cwd=tmp_path, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120
    )
    assert teacher_server.behaviour.served == 8  # only the two unfinished shards were asked for
    traces = load_from_disk(output)
    keys = list(zip(traces["problem"], traces["sample_index"]))
    assert len(keys) == 16 and len(set(keys)) == 16  # nothing lost, nothing duplicated
