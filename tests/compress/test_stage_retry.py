"""A run that failed before finishing any shard does not block its corrected retry; a run with finished shards keeps
its protection (other arguments are refused, the shards kept)."""

import os
import subprocess
import sys

import pytest
from datasets import load_from_disk

from hf_compress.backends import OpenAIBackend, SamplingConfig, TeacherUnavailableError
from hf_compress.constants import SHARDS_DIR
from hf_compress.generate import generate
from hf_compress.stages import StageMismatchError
from kit.tiny import make_task_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def problems(n=4):
    return make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])


def finished_shards(output):
    shard_dir = os.path.join(output, SHARDS_DIR)
    return sorted(n for n in os.listdir(shard_dir) if n.startswith("shard-")) if os.path.isdir(shard_dir) else []


def test_a_run_that_finished_no_shard_does_not_block_its_corrected_retry(teacher_server, unreachable_url, tmp_path):
    output = str(tmp_path / "g")
    wrong = OpenAIBackend("typo-teacher", base_url=unreachable_url, max_retries=0, backoff_seconds=0.01)
    with pytest.raises(TeacherUnavailableError):
        generate(problems(), wrong, SamplingConfig(), output_dir=output, shard_size=2)
    assert os.path.exists(os.path.join(output, SHARDS_DIR, "shards.json")) and finished_shards(output) == []

    traces = generate(
        problems(),
        OpenAIBackend("teacher", base_url=teacher_server.base_url),
        SamplingConfig(),
        output_dir=output,
        shard_size=2,
    )  # other arguments ('teacher'), nothing to protect
    assert len(traces) == 4 and set(traces["teacher"]) == {"teacher"}


def test_a_run_with_finished_shards_keeps_its_protection(teacher_server, tmp_path):
    output = str(tmp_path / "g")
    teacher_server.behaviour.fail_after = 2  # two problems (one shard) answered, then 503s
    failing = OpenAIBackend(
        "teacher", base_url=teacher_server.base_url, max_concurrency=1, max_retries=0, backoff_seconds=0.01
    )  # one request in flight: none arrives after the run has failed
    with pytest.raises(TeacherUnavailableError):
        generate(problems(), failing, SamplingConfig(), output_dir=output, shard_size=2, problems_per_call=2)
    assert finished_shards(output) == ["shard-00000-of-00002"]
    teacher_server.behaviour.reset()
    other = OpenAIBackend("other-teacher", base_url=teacher_server.base_url)
    with pytest.raises(StageMismatchError, match=r"arguments changed: \['teacher'\]"):
        generate(problems(), other, SamplingConfig(), output_dir=output, shard_size=2, problems_per_call=2)
    assert finished_shards(output) == ["shard-00000-of-00002"] and teacher_server.behaviour.requests == 0


def hf_compress(*args, cwd):
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # four runs of the console script: about 35 s on the loaded 2-core CPU
def test_hf_compress_generate_retries_clean_after_a_failure_with_no_rows_but_protects_rows(
    teacher_server, unreachable_url, tmp_path
):
    problems().save_to_disk(str(tmp_path / "problems"))
    common = [
        "generate",
        "--input",
        "problems",
        "--backend",
        "openai",
        "--shard_size",
        "2",
        "--problems_per_call",
        "2",
        "--max_retries",
        "0",
        "--backoff_seconds",
        "0.01",
        "--max_concurrency",
        "1",
    ]

    failed = hf_compress(
        *common, "--output", "a", "--model", "typo-teacher", "--base_url", unreachable_url, cwd=tmp_path
    )
    assert failed.returncode == 1 and "TeacherUnavailableError" in failed.stderr, failed.stderr[-2000:]
    assert os.path.exists(tmp_path / "a" / SHARDS_DIR / "shards.json")
    retried = hf_compress(
        *common, "--output", "a", "--model", "teacher", "--base_url", teacher_server.base_url, cwd=tmp_path
    )
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert len(load_from_disk(str(tmp_path / "a"))) == 4

    teacher_server.behaviour.reset()
    teacher_server.behaviour.fail_after = 2
    failed = hf_compress(
        *common, "--output", "b", "--model", "teacher", "--base_url", teacher_server.base_url, cwd=tmp_path
    )
    assert failed.returncode == 1 and finished_shards(str(tmp_path / "b")) == ["shard-00000-of-00002"]
    teacher_server.behaviour.reset()
    refused = hf_compress(
        *common, "--output", "b", "--model", "other-teacher", "--base_url", teacher_server.base_url, cwd=tmp_path
    )
    assert refused.returncode == 2 and "arguments changed: ['teacher']" in refused.stderr, refused.stderr[-2000:]
    assert finished_shards(str(tmp_path / "b")) == ["shard-00000-of-00002"] and teacher_server.behaviour.requests == 0
