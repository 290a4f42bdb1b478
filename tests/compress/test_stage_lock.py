"""One run per output folder: a second run on a folder in use is refused at once (folder and holder named, nothing
sent or changed), and a run killed with SIGKILL leaves no lock behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from datasets import Dataset, load_from_disk

from hf_compress.backends import OpenAIBackend, SamplingConfig
from hf_compress.build import build
from hf_compress.cli import main
from hf_compress.compress import ExtractiveCompressor, compress
from hf_compress.generate import generate
from hf_compress.locking import OutputFolderInUseError, lock_paths, output_lock
from hf_compress.verify import verify
from kit.tiny import build_tokenizer, make_task_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def problems(n=4):
    return make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])


class HeldElsewhere:
    """Holds a folder's lock from another thread of this process (as another run would) until the block ends."""

    def __init__(self, folder):
        self.folder, self.held, self.done = folder, threading.Event(), threading.Event()

    def _hold(self):
        with output_lock(self.folder, "generate"):
            self.held.set()
            self.done.wait(60)

    def __enter__(self):
        self.thread = threading.Thread(target=self._hold)
        self.thread.start()
        assert self.held.wait(30)
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def snapshot(folder):
    """Every file under the folder with its size and modification time."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


def test_a_stage_refuses_a_folder_another_run_holds_and_sends_nothing(teacher_server, tmp_path):
    output = str(tmp_path / "g")
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url)
    with HeldElsewhere(output):
        with pytest.raises(OutputFolderInUseError, match=rf"{output} is in use by process {os.getpid()} on "):
            generate(problems(), backend, output_dir=output)
    assert teacher_server.behaviour.requests == 0 and not os.path.exists(output)
    generate(problems(), backend, SamplingConfig(), output_dir=output)  # released: the next run proceeds
    assert teacher_server.behaviour.requests == 4
    lock_file, holder_file = lock_paths(output)
    assert not os.path.exists(holder_file) and not os.path.exists(os.path.join(output, os.path.basename(lock_file)))


def test_every_stage_takes_the_lock(tmp_path):
    traces = Dataset.from_dict({"problem": ["p"], "answer": ["1"], "generation": ["\\boxed{1}"]})
    tokenizer = build_tokenizer()
    verified = verify(traces, output_dir=str(tmp_path / "v"))
    compressed = compress(verified, ExtractiveCompressor(), tokenizer, output_dir=str(tmp_path / "c"))
    runs = {
        "v": lambda: verify(traces, output_dir=str(tmp_path / "v")),
        "c": lambda: compress(verified, ExtractiveCompressor(), tokenizer, output_dir=str(tmp_path / "c")),
        "b": lambda: build(compressed, tokenizer, output_dir=str(tmp_path / "b")),
    }
    for folder, run in runs.items():
        with HeldElsewhere(str(tmp_path / folder)):
            before = snapshot(tmp_path)
            with pytest.raises(OutputFolderInUseError, match="is in use by"):
                run()
            assert snapshot(tmp_path) == before, folder
        run()  # once released it runs (or returns its saved result)


def test_nested_use_in_one_thread_reenters_and_a_stale_lock_file_does_not_block(tmp_path):
    output = str(tmp_path / "v")
    lock_file, holder_file = lock_paths(output)
    with open(lock_file, "w"), open(holder_file, "w") as f:  # what a killed run leaves: its lock went with it
        json.dump({"pid": 999999, "host": "gone", "command": "hf-compress verify", "since": "earlier"}, f)
    traces = Dataset.from_dict({"problem": ["p"], "answer": ["1"], "generation": ["\\boxed{1}"]})
    with output_lock(output, "verify"):
        assert json.load(open(holder_file))["pid"] == os.getpid()
        assert list(verify(traces, output_dir=output)["correct"]) == [True]  # the stage re-enters the lock
    assert not os.path.exists(holder_file)


def test_hf_compress_run_locks_its_output_dir_as_a_whole(teacher_server, tmp_path, capsys):
    problems().save_to_disk(str(tmp_path / "problems"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "pipeline"),
                "input": str(tmp_path / "problems"),
                "generate": {"backend": "openai", "model": "teacher", "base_url": teacher_server.base_url},
            }
        )
    )
    with HeldElsewhere(str(tmp_path / "pipeline")), pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe)])
    assert (
        exit_info.value.code == 2
        and f"the output folder {tmp_path / 'pipeline'} is in use by" in capsys.readouterr().err
    )
    assert teacher_server.behaviour.requests == 0 and not os.path.exists(tmp_path / "pipeline")
    main(["run", str(recipe)])
    assert len(load_from_disk(str(tmp_path / "pipeline" / "generate"))) == 4


# ----------------------------------------------------------------------------------------------------------
# As a user runs it: two `hf-compress generate` processes on one folder
# ----------------------------------------------------------------------------------------------------------


def hf_compress_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]


@pytest.mark.slow  # three runs of the console script: about 30 s on the loaded 2-core CPU
def test_a_second_hf_compress_run_exits_at_once_and_a_killed_run_does_not_block(teacher_server, tmp_path):
    problems().save_to_disk(str(tmp_path / "problems"))
    output = str(tmp_path / "g")
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
        "1",
        "--problems_per_call",
        "1",
        "--max_concurrency",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    teacher_server.behaviour.hang_after = 2  # the first problem's two samples, then requests are held open
    teacher_server.behaviour.hang_seconds = 120
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while teacher_server.behaviour.requests < 3:  # the first run holds the lock and waits on the server
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the first run made no progress"
            time.sleep(0.05)
        before, requests = snapshot(tmp_path), teacher_server.behaviour.requests

        second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"the output folder {output} is in use by process {first.pid} on " in second.stderr
        assert "hf-compress generate --input" in second.stderr  # the holder's command
        assert (
            teacher_server.behaviour.requests == requests and snapshot(tmp_path) == before
        )  # nothing sent or changed

        first.send_signal(signal.SIGKILL)  # no chance to clean up
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stderr.close()
    teacher_server.behaviour.reset()  # the server answers again

    third = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    traces = load_from_disk(output)
    assert len(traces) == 8 and len(set(zip(traces["problem"], traces["sample_index"]))) == 8
    assert teacher_server.behaviour.served == 6  # the finished shard was kept, not asked for again
    assert not os.path.exists(os.path.join(output, ".shards"))
