"""Teacher generation spread over several OpenAI-compatible servers, one of which stops answering mid-run; streamed
answers, a server that goes silent mid-answer and one that is slow but steady (the conftest server, streaming)."""

import threading
import time

import pytest
import yaml
from datasets import load_from_disk

from hf_compress.backends import BackendConfig, OpenAIBackend, SamplingConfig, TeacherUnavailableError
from hf_compress.cli import main
from hf_compress.generate import generate
from kit.tiny import make_task_dataset

SAMPLING = SamplingConfig(n=2, temperature=0.7, seed=3)


def problems(n=12):
    return make_task_dataset("arithmetic", n, seed=0).select_columns(["problem", "answer"])


def as_rows(traces):
    return sorted(zip(traces["problem"], traces["sample_index"], traces["generation"], traces["num_tokens"]))


def stop_when_served(server, served: int, how: str) -> threading.Thread:
    """Once `server` has answered `served` requests, shut it down or make it hang (bounded wait)."""

    def watch():
        deadline = time.time() + 60
        while server.behaviour.served < served and time.time() < deadline:
            time.sleep(0.005)
        if how == "shutdown":
            server.stop()
        else:
            server.behaviour.hang_after = 0

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_base_url_takes_several_servers_as_a_comma_separated_string_or_a_list():
    urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    assert BackendConfig(backend="openai", model="m", base_url=" , ".join(urls)).base_urls == urls
    assert BackendConfig(backend="openai", model="m", base_url=urls).base_urls == urls
    assert BackendConfig(backend="openai", model="m").base_urls == [None]  # the client's default (api.openai.com)
    with pytest.raises(ValueError, match="http://.*localhost:8000/v1"):
        BackendConfig(backend="openai", model="m", base_url="http://a:1/v1,localhost:8000/v1")
    with pytest.raises(ValueError, match="twice"):
        BackendConfig(backend="openai", model="m", base_url=[urls[0], urls[0]])


def test_requests_are_spread_over_the_servers(start_teacher_server):
    first, second = start_teacher_server(), start_teacher_server()
    for server in (first, second):
        server.behaviour.delay_seconds = 0.05
    backend = OpenAIBackend("teacher", base_url=[first.base_url, second.base_url], max_concurrency=2)
    spread = generate(problems(8), backend, SAMPLING, shard_size=4, problems_per_call=4)
    assert first.behaviour.served + second.behaviour.served == 16
    assert min(first.behaviour.served, second.behaviour.served) >= 4  # least-loaded: both take a fair share
    alone = generate(
        problems(8), OpenAIBackend("teacher", base_url=first.base_url), SAMPLING, shard_size=4, problems_per_call=4
    )
    assert as_rows(spread) == as_rows(alone)  # per-sample seeds: which server answers does not matter


@pytest.mark.parametrize("how", ["shutdown", "hang"])
def test_a_server_that_stops_answering_has_its_requests_retried_on_the_others(start_teacher_server, tmp_path, how):
    first, second = start_teacher_server(), start_teacher_server()
    for server in (first, second):
        server.behaviour.delay_seconds = 0.03
    second.behaviour.hang_seconds = 5
    watcher = stop_when_served(second, 4, how)
    backend = OpenAIBackend(
        "teacher",
        base_url=[first.base_url, second.base_url],
        max_concurrency=2,
        backoff_seconds=0.05,
        request_timeout=0.5,
    )
    traces = generate(
        problems(12), backend, SAMPLING, output_dir=str(tmp_path / "g"), shard_size=4, problems_per_call=2
    )
    watcher.join(timeout=10)

    keys = list(zip(traces["problem"], traces["sample_index"]))
    assert len(keys) == 24 and len(set(keys)) == 24  # nothing lost, nothing duplicated
    assert 4 <= second.behaviour.served < 24 and first.behaviour.served + second.behaviour.served >= 24
    assert backend.servers[1].last_error  # requests really failed on the second server
    alone = generate(
        problems(12), OpenAIBackend("teacher", base_url=first.base_url), SAMPLING, shard_size=4, problems_per_call=2
    )
    assert as_rows(traces) == as_rows(alone)


def test_every_server_down_names_each_of_them(unreachable_url, start_teacher_server):
    other = start_teacher_server()
    other.stop()
    backend = OpenAIBackend("teacher", base_url=[unreachable_url, other.base_url], max_retries=2, backoff_seconds=0.01)
    with pytest.raises(TeacherUnavailableError, match="failed 3 times") as error:
        backend.generate([[{"role": "user", "content": "Compute 1 + 1 from left to right."}]], SAMPLING, seed=0)
    assert unreachable_url in str(error.value) and other.base_url in str(error.value)


def test_several_servers_from_the_command_line_and_from_a_recipe(start_teacher_server, tmp_path):
    first, second = start_teacher_server(), start_teacher_server()
    problems(4).save_to_disk(str(tmp_path / "problems"))
    common = ["--backend", "openai", "--model", "teacher", "--n", "2", "--max_concurrency", "1"]
    main(
        [
            "generate",
            "--input",
            str(tmp_path / "problems"),
            "--output",
            str(tmp_path / "cli"),
            *common,
            "--base_url",
            first.base_url,
            second.base_url,
        ]
    )
    assert len(load_from_disk(str(tmp_path / "cli"))) == 8
    assert first.behaviour.served > 0 and second.behaviour.served > 0

    for name, base_url in [
        ("list", [first.base_url, second.base_url]),
        ("string", f"{first.base_url},{second.base_url}"),
    ]:
        first.behaviour.reset(), second.behaviour.reset()
        recipe = {
            "output_dir": str(tmp_path / name),
            "input": str(tmp_path / "problems"),
            "generate": {"backend": "openai", "model": "teacher", "base_url": base_url, "n": 2, "max_concurrency": 1},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        main(["run", str(tmp_path / f"{name}.yaml")])
        assert len(load_from_disk(str(tmp_path / name / "generate"))) == 8
        assert first.behaviour.served > 0 and second.behaviour.served > 0


# ----------------------------------------------------------------------------------------------------------
# Streamed answers: a server that stops sending is detected by its silence, a slow but steady one is not cut
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def streaming_server(start_teacher_server):
    """A server of its own that streams word by word (the conftest server with `stream` on)."""
    server = start_teacher_server()
    server.behaviour.stream = True
    return server.base_url, server.behaviour


ONE_PROBLEM = [[{"role": "user", "content": "Compute 3 + 4 from left to right."}]]
ANSWER_TEXT = "Let me think step by step. 3 + 4 = 7. So the result is clear. The answer is \\boxed{7}."
ANSWER = (ANSWER_TEXT, len(ANSWER_TEXT.split()), "stop")  # one token per word, as the server counts them


def test_a_streamed_answer_reads_as_one_answer(streaming_server):
    url, behaviour = streaming_server
    (generations,) = OpenAIBackend("teacher", base_url=url).generate(ONE_PROBLEM, SamplingConfig(n=2), seed=0)
    assert [(g.text, g.num_tokens, g.finish_reason) for g in generations] == [ANSWER] * 2
    assert behaviour.requests == 2
    assert behaviour.last_body["stream"] and behaviour.last_body["stream_options"] == {"include_usage": True}


def test_an_answer_that_stops_mid_stream_is_retried_after_the_stall_timeout(streaming_server):
    url, behaviour = streaming_server
    behaviour.stall_after_chunks, behaviour.stall_requests = 3, 1  # 3 words, then silence (30 s at most)
    backend = OpenAIBackend(
        "teacher", base_url=url, request_timeout=30, stall_timeout_seconds=1.0, max_retries=2, backoff_seconds=0.01
    )
    start = time.monotonic()
    (generations,) = backend.generate(ONE_PROBLEM, SamplingConfig(), seed=0)
    elapsed = time.monotonic() - start
    assert generations[0].text == ANSWER_TEXT and behaviour.requests == 2  # the retry got the whole answer
    assert elapsed < 15  # the silence was cut after about a second, not after request_timeout or 30 s
    assert "stalled" in backend.servers[0].last_error

    behaviour.requests, behaviour.stall_requests = 0, 3  # silent every time: a clear error, quickly
    backend = OpenAIBackend("teacher", base_url=url, stall_timeout_seconds=0.5, max_retries=1, backoff_seconds=0.01)
    with pytest.raises(TeacherUnavailableError, match=r"failed 2 times.*the answer stalled: nothing for"):
        backend.generate(ONE_PROBLEM, SamplingConfig(), seed=0)


def test_a_slow_but_steady_answer_is_not_cut(streaming_server):
    url, behaviour = streaming_server
    behaviour.chunk_seconds = behaviour.first_chunk_seconds = 0.25  # about 4.5 s in all, never 1.5 s silent
    backend = OpenAIBackend("teacher", base_url=url, request_timeout=1.5, stall_timeout_seconds=1.5, max_retries=0)
    start = time.monotonic()
    (generations,) = backend.generate(ONE_PROBLEM, SamplingConfig(), seed=0)
    assert generations[0].text == ANSWER_TEXT and behaviour.requests == 1
    assert time.monotonic() - start > 3  # longer than either timeout: neither bounds the whole answer


def test_stall_timeout_is_an_option_of_the_command_line_and_of_a_recipe(streaming_server, tmp_path):
    url, behaviour = streaming_server
    behaviour.stall_after_chunks, behaviour.stall_requests = 2, 1
    problems(1).save_to_disk(str(tmp_path / "problems"))
    main(
        [
            "generate",
            "--input",
            str(tmp_path / "problems"),
            "--output",
            str(tmp_path / "cli"),
            "--backend",
            "openai",
            "--model",
            "teacher",
            "--base_url",
            url,
            "--stall_timeout_seconds",
            "0.5",
            "--backoff_seconds",
            "0.01",
        ]
    )
    assert behaviour.requests == 2 and len(load_from_disk(str(tmp_path / "cli"))) == 1
    with pytest.raises(ValueError, match=r"--stall_timeout_seconds must be a number > 0, got 0.0"):
        BackendConfig(backend="openai", model="teacher", stall_timeout_seconds=0)
