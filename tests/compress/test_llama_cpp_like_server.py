"""`hf-compress` against a server that behaves like llama-cpp-python's (`behave_like_llama_cpp`): no usage in streams,
the stream in flight cut by the next request, a prompt over its context answered 200-empty when streamed, any model
name answered. Each behaviour goes through the console script in a subprocess, as a user meets it; one server for
the module, and the whole README chain (generate -> verify -> compress with the LLM compressor -> build) in one
`hf-compress run`, so that the module costs four interpreter start-ups."""

import os
import subprocess
import sys

import pytest
import yaml
from datasets import load_from_disk

from hf_compress.backends import OpenAIBackend, SamplingConfig, TeacherRequestError
from kit.tiny import build_tokenizer, make_task_dataset
from tests.compress.conftest import behave_like_llama_cpp, start_server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the one name the server lists
SWITCH_LINE = "Requests are no longer streamed"


def hf_compress(*args, cwd) -> subprocess.CompletedProcess:
    """The console script as users run it (next to this interpreter), with this checkout's code."""
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def llama_like():
    server = start_server()
    yield server
    server.behaviour.reset()
    server.stop()


@pytest.fixture
def server(llama_like):
    behave_like_llama_cpp(llama_like.behaviour)
    yield llama_like
    llama_like.behaviour.reset()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Six arithmetic problems and the tiny tokenizer, saved once for the module."""
    root = tmp_path_factory.mktemp("llama_like")
    make_task_dataset("arithmetic", 6, seed=0).select_columns(["problem", "answer"]).save_to_disk(
        str(root / "problems")
    )
    build_tokenizer().save_pretrained(str(root / "tokenizer"))
    return root


def generate_args(folders, server, output, *extra):
    return [
        "generate",
        "--input",
        str(folders / "problems"),
        "--output",
        str(folders / output),
        "--backend",
        "openai",
        "--model",
        MODEL,
        "--base_url",
        server.base_url,
        "--backoff_seconds",
        "0.01",
        *extra,
    ]


@pytest.mark.slow  # one `hf-compress run` of four stages: about 15 s on 2 cores
def test_the_readme_chain_runs_with_default_options(server, folders):
    # max_new_tokens=22 cuts the trace of the first problem (25 words) after its last step: "-10 + 4 = -6. So the
    # result is clear. The", whose last number is the gold (-6). It must not be kept.
    url, tokenizer = server.base_url, str(folders / "tokenizer")
    recipe = {
        "output_dir": str(folders / "chain"),
        "input": str(folders / "problems"),
        "generate": {"backend": "openai", "model": MODEL, "base_url": url, "n": 2, "max_new_tokens": 22},
        "verify": {},
        "compress": {
            "compressor": "llm",
            "backend": "openai",
            "model": MODEL,
            "base_url": url,
            "tokenizer": tokenizer,
        },
        "build": {"tokenizer": tokenizer},
    }
    (folders / "chain.yaml").write_text(yaml.safe_dump(recipe))
    result = hf_compress("run", str(folders / "chain.yaml"), cwd=folders)
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.behaviour.interrupted > 0  # streams really were cut by concurrent requests
    # One line per backend (generate's teacher, the LLM compressor), each naming the cause and what changes.
    assert result.stderr.count(SWITCH_LINE) == 2, result.stderr[-3000:]
    assert "interrupt_requests" in result.stderr
    assert not any(body.get("stream") for body in server.behaviour.bodies[-3:])  # plain requests from then on

    traces = load_from_disk(str(folders / "chain" / "verify"))
    assert len(traces) == 12 and set(traces["num_tokens"]) != {0}
    truncated = [row for row in traces if row["finish_reason"] == "length"]
    assert len(truncated) == 2 and all(not r["correct"] and r["verify_note"] == "truncated" for r in truncated)
    assert sum(traces["correct"]) >= 6
    built = load_from_disk(str(folders / "chain" / "build" / "compressed"))
    assert 0 < len(built) == sum(traces["correct"])


@pytest.mark.slow  # one start of the console script: about 6 s
def test_streams_cut_by_concurrent_requests_name_the_server_setting(server, folders):
    server.behaviour.stream_usage = True  # so that the cut streams are the only problem
    server.behaviour.first_chunk_seconds = 0.3  # every request is in flight when the first words go out
    result = hf_compress(
        *generate_args(folders, server, "cut", "--n", "2", "--stream", "true", "--max_retries", "1"), cwd=folders
    )
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "TeacherUnavailableError" in error and "ended with no finish reason" in error
    assert "--interrupt_requests False" in error and "--max_concurrency 1" in error


@pytest.mark.slow  # one start of the console script: about 6 s
def test_a_prompt_over_the_context_is_one_error_with_its_length(server, folders):
    server.behaviour.context_chars = 50  # every prompt of the default template is longer
    result = hf_compress(*generate_args(folders, server, "overflow", "--max_concurrency", "1"), cwd=folders)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "TeacherRequestError: The prompt is longer than the teacher's context" in error
    assert "characters in 1 message(s)" in error and "maximum context length is 50 tokens" in error
    assert server.behaviour.requests == 2  # streamed (200, empty), then once plain to learn why; no retry


@pytest.mark.slow  # one start of the console script: about 6 s
def test_a_model_the_server_does_not_list_is_refused_before_any_request(server, folders):
    args = generate_args(folders, server, "wrong_model")
    args[args.index(MODEL)] = "teacher"
    result = hf_compress(*args, cwd=folders)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert f"does not serve the model 'teacher': it serves '{MODEL}'" in error
    assert server.behaviour.requests == 0


def test_the_same_overflow_without_streaming_and_no_usage_with_streaming_forced(server):
    conversation = [[{"role": "user", "content": "Compute 1 + 2 from left to right."}]]
    server.behaviour.context_chars = 20
    backend = OpenAIBackend(MODEL, base_url=server.base_url, stream=False, max_retries=3)
    with pytest.raises(TeacherRequestError, match=r"33 characters in 1 message.*maximum context length is 20"):
        backend.generate(conversation, SamplingConfig(), seed=0)
    assert server.behaviour.requests == 1

    server.behaviour.context_chars = None
    backend = OpenAIBackend(
        MODEL, base_url=server.base_url, stream=True, max_concurrency=1, max_retries=3, backoff_seconds=0.01
    )
    with pytest.raises(TeacherRequestError, match=r"sends no token counts in streamed answers.*--stream false"):
        backend.generate(conversation, SamplingConfig(), seed=0)
    assert server.behaviour.requests == 2  # not retried


def test_default_options_switch_to_plain_requests_once(server, caplog):
    backend = OpenAIBackend(MODEL, base_url=server.base_url)
    conversations = [[{"role": "user", "content": f"Compute {i} + 2 from left to right."}] for i in range(6)]
    with caplog.at_level("WARNING"):
        results = backend.generate(conversations, SamplingConfig(n=2), seed=0)
    assert [
        g.text.endswith(f"\\boxed{{{i + 2}}}.") or g.text.endswith(f"\\boxed{{{i + 3}}}.")
        for i, gs in enumerate(results)
        for g in gs
    ] == [True] * 12
    assert all(g.num_tokens == len(g.text.split()) and g.finish_reason == "stop" for gs in results for g in gs)
    assert [r.getMessage().count(SWITCH_LINE) for r in caplog.records] == [1] and not backend.streaming
    assert backend.servers[0].max_in_flight == 1  # it cut streams for the next request: it answers one at a time
