"""A small OpenAI-compatible chat-completions server for the pipeline tests, served by uvicorn on 127.0.0.1.

It answers deterministically from the request: arithmetic problems ("Compute 3 + 4 * 2 from left to right.")
get a worked trace whose answer is wrong for one seed in four (so pass rates vary); compression requests
(prompts from `COMPRESSION_PROMPTS`) get the solution without its sentences that hold no digit. It counts
requests and can be told to delay, fail, answer with empty text, send scripted raw answers (garbage), or hang.
`start_teacher_server` starts extra servers for one test, each of which the test can stop mid-run.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response


@dataclass
class ServerBehaviour:
    delay_seconds: float = 0.0
    fail_after: int | None = None  # answer 503 to every request after this many were served
    fail_next: int = 0  # answer 503 to the next k requests, then recover
    empty_answers: bool = False
    # raw answers (status, content_type, body) for the next requests, in order, before any other behaviour
    scripted: list[tuple[int, str, str]] = field(default_factory=list)
    hang_after: int | None = None  # hold every request after this many were served open, unanswered ...
    hang_seconds: float = 30.0  # ... for at most this long (or until reset), then answer 503
    # a model behind the server: `answer(body) -> (text, completion_tokens, finish_reason)` replaces the traces
    answer: Callable[[dict], tuple[str, int, str]] | None = None
    requests: int = 0
    served: int = 0
    last_body: dict | None = None

    def reset(self):
        self.__init__()


def solve(expression: str) -> int:
    tokens = expression.split()
    value = int(tokens[0])
    for op, n in zip(tokens[1::2], tokens[2::2]):
        value = value + int(n) if op == "+" else value - int(n) if op == "-" else value * int(n)
    return value


def teacher_trace(problem: str, seed: int) -> str:
    match = re.search(r"Compute (.+) from left to right", problem)
    if not match:
        return "I cannot solve this."
    tokens = match.group(1).split()
    value, steps = int(tokens[0]), []
    for op, n in zip(tokens[1::2], tokens[2::2]):
        new = solve(f"{value} {op} {n}")
        steps.append(f"{value} {op} {n} = {new}.")
        value = new
    answer = value + 1 if seed % 4 == 3 else value
    return f"Let me think step by step. {' '.join(steps)} So the result is clear. The answer is \\boxed{{{answer}}}."


def compressed_solution(prompt: str) -> str:
    solution = prompt.split("Solution:\n", 1)[1]
    return " ".join(s for s in re.split(r"(?<=\.)\s+", solution) if re.search(r"\d", s))


def make_app(behaviour: ServerBehaviour) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        behaviour.requests += 1
        behaviour.last_body = body
        if behaviour.scripted:
            status, content_type, content = behaviour.scripted.pop(0)
            return Response(content, status_code=status, media_type=content_type)
        if behaviour.hang_after is not None and behaviour.served >= behaviour.hang_after:
            deadline = time.monotonic() + behaviour.hang_seconds
            while behaviour.hang_after is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return JSONResponse({"error": {"message": "stopped hanging", "type": "server_error"}}, status_code=503)
        await asyncio.sleep(behaviour.delay_seconds)
        failing = behaviour.fail_after is not None and behaviour.served >= behaviour.fail_after
        if failing or behaviour.fail_next > 0:
            behaviour.fail_next = max(0, behaviour.fail_next - 1)
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)
        behaviour.served += 1
        prompt = body["messages"][-1]["content"]
        if behaviour.answer is not None:
            text, tokens, finish_reason = behaviour.answer(body)
            return {"id": f"chatcmpl-{behaviour.requests}", "object": "chat.completion", "created": 0,
                    "model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                         "finish_reason": finish_reason}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}}
        if behaviour.empty_answers:
            text = ""
        elif prompt.startswith("Rewrite the solution"):
            text = compressed_solution(prompt)
        else:
            text = teacher_trace(prompt, body.get("seed") or 0)
        words = text.split()
        finish_reason = "length" if len(words) > body["max_tokens"] else "stop"
        text = " ".join(words[: body["max_tokens"]])
        return {
            "id": f"chatcmpl-{behaviour.requests}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(prompt.split()) + len(text.split())},
        }

    return app


@dataclass
class TeacherServer:
    base_url: str
    behaviour: ServerBehaviour
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def stop(self):
        """Shut the server down: it stops answering (connections are refused from then on)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_url():
    """A base URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/v1"


def start_server() -> TeacherServer:
    behaviour = ServerBehaviour()
    port = free_port()
    config = uvicorn.Config(make_app(behaviour), host="127.0.0.1", port=port, log_level="error",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("The test teacher server did not start within 30 s.")
        time.sleep(0.02)
    return TeacherServer(f"http://127.0.0.1:{port}/v1", behaviour, server, thread)


@pytest.fixture(scope="session")
def _running_server():
    running = start_server()
    yield running
    running.behaviour.reset()  # releases hanging requests
    running.stop()


@pytest.fixture
def start_teacher_server():
    """`start_teacher_server()` starts a fresh server for this test; every one started is stopped at its end."""
    started = []

    def start() -> TeacherServer:
        started.append(start_server())
        return started[-1]

    yield start
    for running in started:
        running.behaviour.reset()
        running.stop()


@pytest.fixture
def teacher_server(_running_server):
    """The session's server, with its behaviour reset for each test."""
    _running_server.behaviour.reset()
    yield _running_server
    _running_server.behaviour.reset()


@pytest.fixture(scope="module")
def tokenizer():
    from kit.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def compressed_folder(teacher_server, tokenizer, tmp_path):
    """generate -> verify -> compress through folders (so `build` finds the stage records), as the CLI chains them;
    the tokenizer is saved beside them (`tmp_path / "tokenizer"`) for `hf-compress build --tokenizer`."""
    from hf_compress.backends import OpenAIBackend, SamplingConfig
    from hf_compress.compress import ExtractiveCompressor, compress
    from hf_compress.generate import generate
    from hf_compress.verify import verify
    from kit.tiny import make_task_dataset

    problems = make_task_dataset("arithmetic", 6, seed=0).select_columns(["problem", "answer"])
    traces = generate(problems, OpenAIBackend("teacher", base_url=teacher_server.base_url), SamplingConfig(n=2),
                      output_dir=str(tmp_path / "generate"))
    checked = verify(traces, output_dir=str(tmp_path / "verify"))
    compress(checked, ExtractiveCompressor(), tokenizer, output_dir=str(tmp_path / "compress"))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    return str(tmp_path / "compress")
