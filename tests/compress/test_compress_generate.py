"""The generate stage: shards, resume after a killed process, cache, clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from datasets import Dataset, load_from_disk

from hf_compress.backends import (
    BackendConfig,
    OpenAIBackend,
    SamplingConfig,
    TeacherUnavailableError,
    TransformersBackend,
)
from hf_compress.constants import SHARDS_DIR, STAGE_FILE
from hf_compress.generate import generate
from hf_compress.stages import StageMismatchError, read_stage_record
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def problems(n=12):
    return make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])


def finished_shards(output_dir):
    shard_dir = os.path.join(output_dir, SHARDS_DIR)
    return sorted(n for n in os.listdir(shard_dir) if n.startswith("shard-")) if os.path.isdir(shard_dir) else []


def as_rows(traces):
    return sorted(zip(traces["problem"], traces["sample_index"], traces["generation"], traces["num_tokens"]))


def test_generate_rows_columns_and_statistics(teacher_server, tmp_path):
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url)
    traces = generate(
        problems(4), backend, SamplingConfig(n=2, max_new_tokens=64), output_dir=str(tmp_path / "g"), shard_size=3
    )
    assert len(traces) == 8
    assert traces.column_names == [
        "problem",
        "answer",
        "sample_index",
        "generation",
        "num_tokens",
        "finish_reason",
        "teacher",
    ]
    assert list(traces["sample_index"]) == [0, 1] * 4
    assert set(traces["teacher"]) == {"teacher"} and set(traces["finish_reason"]) == {"stop"}
    assert all(t == len(g.split()) for g, t in zip(traces["generation"], traces["num_tokens"]))
    record = load_from_disk(str(tmp_path / "g"))  # a plain datasets folder
    assert len(record) == 8 and not os.path.exists(tmp_path / "g" / SHARDS_DIR)


def test_generate_is_cached_and_refuses_to_mix_arguments(teacher_server, tmp_path):
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url)
    output = str(tmp_path / "g")
    first = generate(problems(4), backend, SamplingConfig(n=1), output_dir=output)
    served = teacher_server.behaviour.requests
    again = generate(problems(4), backend, SamplingConfig(n=1), output_dir=output)
    assert teacher_server.behaviour.requests == served  # nothing regenerated
    assert as_rows(again) == as_rows(first)
    with pytest.raises(StageMismatchError, match=r"arguments changed: \['sampling'\].*overwrite"):
        generate(problems(4), backend, SamplingConfig(n=2), output_dir=output)
    redone = generate(problems(4), backend, SamplingConfig(n=2), output_dir=output, overwrite=True)
    assert len(redone) == 8


def test_generate_names_missing_columns():
    no_answer = Dataset.from_dict({"question": ["Compute 1 + 1 from left to right."]})
    with pytest.raises(ValueError, match=r"\['problem', 'answer'\].*\['question'\]"):
        generate(no_answer, backend=None)


def test_failing_server_keeps_finished_shards_and_resume_skips_them(teacher_server, tmp_path):
    teacher_server.behaviour.fail_after = 4  # two shards of two problems, then the server goes down
    # One request at a time: a failed call abandons the requests it has in flight, which would reach the server
    # after the reset below and blur the count of what the resume asks for.
    backend = OpenAIBackend(
        "teacher", base_url=teacher_server.base_url, max_retries=1, backoff_seconds=0.01, max_concurrency=1
    )
    output = str(tmp_path / "g")
    with pytest.raises(TeacherUnavailableError, match="rerun the same command to resume"):
        generate(problems(8), backend, SamplingConfig(), output_dir=output, shard_size=2, problems_per_call=2)
    assert len(finished_shards(output)) == 2
    teacher_server.behaviour.reset()
    traces = generate(problems(8), backend, SamplingConfig(), output_dir=output, shard_size=2, problems_per_call=2)
    assert teacher_server.behaviour.requests == 4  # only the four unfinished problems were asked again
    assert len(traces) == 8 and len(set(traces["problem"])) == 8


RESUMABLE_RUN = textwrap.dedent(
    """
    import sys
    from datasets import load_from_disk
    from hf_compress.backends import BackendConfig, OpenAIBackend, SamplingConfig
    from hf_compress.generate import generate

    problems_dir, base_url, output_dir = sys.argv[1:]
    backend = OpenAIBackend("teacher", base_url=base_url, max_concurrency=2)
    generate(load_from_disk(problems_dir), backend, SamplingConfig(n=2, temperature=0.7, seed=11),
             output_dir=output_dir, shard_size=2, problems_per_call=1)
    """
)


@pytest.mark.slow  # 6-8 s on the loaded 2-core CPU, most of it the generating subprocess importing hf_compress
def test_killed_run_resumes_with_nothing_lost_or_duplicated(teacher_server, tmp_path):
    data = problems(12)
    data.save_to_disk(str(tmp_path / "problems"))
    script = tmp_path / "resumable_run.py"
    script.write_text(RESUMABLE_RUN)
    output = str(tmp_path / "g")
    teacher_server.behaviour.delay_seconds = 0.15  # ~0.15 s per problem: the run lasts about 2 s
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "problems"), teacher_server.base_url, output],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while len(finished_shards(output)) < 2:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the generating process made no progress"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: as a crash or a pre-empted job
    process.wait()
    process.stderr.close()

    done = finished_shards(output)
    assert 2 <= len(done) < 6 and not os.path.exists(os.path.join(output, STAGE_FILE))
    teacher_server.behaviour.reset()
    resumed = generate(
        data,
        OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=2),
        SamplingConfig(n=2, temperature=0.7, seed=11),
        output_dir=output,
        shard_size=2,
        problems_per_call=1,
    )
    assert teacher_server.behaviour.requests == 2 * 2 * (6 - len(done))  # finished shards were not redone

    keys = list(zip(resumed["problem"], resumed["sample_index"]))
    assert len(keys) == 24 and len(set(keys)) == 24  # nothing lost, nothing duplicated
    straight = generate(
        data,
        OpenAIBackend("teacher", base_url=teacher_server.base_url),
        SamplingConfig(n=2, temperature=0.7, seed=11),
        shard_size=2,
        problems_per_call=1,
    )
    assert as_rows(resumed) == as_rows(straight)  # the resumed run equals an uninterrupted one


def test_transformers_teacher_resumed_output_equals_in_memory_run(tmp_path):
    tokenizer = build_tokenizer()
    backend = TransformersBackend(
        tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1), tokenizer, batch_size=4
    )
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=3)
    in_memory = generate(problems(6), backend, sampling, shard_size=4, problems_per_call=2)
    on_disk = generate(
        problems(6), backend, sampling, output_dir=str(tmp_path / "g"), shard_size=4, problems_per_call=2
    )
    assert as_rows(on_disk) == as_rows(in_memory)
    assert all(1 <= t <= 6 for t in on_disk["num_tokens"])


def test_a_folder_of_other_files_is_never_written_into_or_deleted(tmp_path, unreachable_url):
    (tmp_path / "notes.txt").write_text("mine")
    backend = OpenAIBackend("teacher", base_url=unreachable_url)
    for overwrite in (False, True):
        with pytest.raises(StageMismatchError, match="not a generate output folder"):
            generate(problems(2), backend, output_dir=str(tmp_path), overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_finished_stage_never_loads_the_teacher(tmp_path):
    tokenizer = build_tokenizer()
    model_dir = str(tmp_path / "teacher")
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = BackendConfig(backend="transformers", model=model_dir, batch_size=4)
    assert config.describe() == config.build().describe()  # one cache key, built or not
    sampling = SamplingConfig(max_new_tokens=4)
    first = generate(problems(3), config, sampling, output_dir=str(tmp_path / "g"))
    shutil.rmtree(model_dir)  # a cached rerun must not need the model at all
    again = generate(problems(3), config, sampling, output_dir=str(tmp_path / "g"))
    assert as_rows(again) == as_rows(first) and set(again["teacher"]) == {model_dir}


def test_other_finish_reasons_are_kept_counted_and_reported(teacher_server, tmp_path, caplog):
    filtered = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "teacher",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Let me"}, "finish_reason": "content_filter"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    teacher_server.behaviour.scripted = [(200, "application/json", json.dumps(filtered))]
    backend = OpenAIBackend("teacher", base_url=teacher_server.base_url, max_concurrency=1)
    output = str(tmp_path / "g")
    with caplog.at_level("WARNING", logger="hf_compress.generate"):
        traces = generate(problems(3), backend, SamplingConfig(), output_dir=output, problems_per_call=1)
    assert list(traces["finish_reason"]) == ["content_filter", "stop", "stop"] and traces["generation"][0] == "Let me"
    stats = read_stage_record(output)["stats"]
    assert stats["finish_reasons"] == {"content_filter": 1, "stop": 2}
    assert stats["other_finish_fraction"] == pytest.approx(1 / 3) and stats["truncated_fraction"] == 0
    assert "1 of 3 traces ended for another reason than stop or length: {'content_filter': 1}" in caplog.text
