"""A small OpenAI-compatible chat-completions server for the pipeline tests, served by uvicorn on 127.0.0.1.

It answers deterministically from the request: arithmetic problems ("Compute 3 + 4 * 2 from left to right.")
get a worked trace whose answer is wrong for one seed in four (so pass rates vary); compression requests
(prompts from `COMPRESSION_PROMPTS`) get the solution without its sentences that hold no digit. It counts
requests and can be told to delay, fail, answer with empty text, send scripted raw answers (garbage), or hang.
`start_teacher_server` starts extra servers for one test, each of which the test can stop mid-run.

By default it answers in one piece even when asked to stream (as some servers do). `behaviour.stream = True` makes
it stream word by word (server-sent events, the usage last when asked), slowly or going silent mid-answer when
told; `behave_like_llama_cpp` switches on what llama-cpp-python's server does: streams without usage, a stream in
flight cut when another request arrives, a prompt over its context answered 200-empty when streamed (a 400
otherwise), one model listed at `/v1/models` and any model name answered.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse


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
    # Streaming (see the module docstring); the stall switches end with `reset`.
    stream: bool = False  # stream when the request asks for it
    stream_usage: bool = True  # send `usage` last when asked (`stream_options.include_usage`)
    chunk_seconds: float = 0.0  # pause before each chunk
    first_chunk_seconds: float = 0.0  # pause before the first chunk (the headers come at once)
    stall_after_chunks: int | None = None  # go silent after this many words (30 s at most) ...
    stall_requests: int = 0  # ... in the first this many requests (the next ones answer in full)
    interrupt_streams: bool = False  # cut a stream after its first chunk when another request is in flight
    context_chars: int | None = None  # a longer prompt is over the context
    models: list[str] | None = None  # listed at /v1/models (None: no such route)
    # a model behind the server: `answer(body) -> (text, completion_tokens, finish_reason)` replaces the traces
    answer: Callable[[dict], tuple[str, int, str]] | None = None
    requests: int = 0
    served: int = 0
    in_flight: int = 0
    interrupted: int = 0
    last_body: dict | None = None
    bodies: list[dict] = field(default_factory=list)

    def reset(self):
        self.__init__()


def behave_like_llama_cpp(
    behaviour: ServerBehaviour, model: str = "SmolLM2-135M-Instruct.Q4_1.gguf", context_chars: int = 2000
) -> ServerBehaviour:
    """What llama-cpp-python's server (0.3) does with its defaults: no usage in streams, the stream in flight cut
    when another request arrives (`--interrupt_requests`), a prompt over `--n_ctx` answered 200 with an empty body
    when streamed (a 400 otherwise), its one model listed by its path, and any model name answered."""
    behaviour.stream, behaviour.stream_usage, behaviour.interrupt_streams = True, False, True
    behaviour.chunk_seconds, behaviour.context_chars, behaviour.models = 0.002, context_chars, [model]
    return behaviour


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


def context_overflow(behaviour: ServerBehaviour, body: dict, prompt_chars: int):
    """llama-cpp-python's answers to a prompt over its context: streamed, a 200 with an empty body; else a 400."""
    if body.get("stream"):

        async def nothing():
            return
            yield

        return StreamingResponse(nothing(), media_type="text/event-stream")
    message = (
        f"This model's maximum context length is {behaviour.context_chars} tokens. However, you requested "
        f"{prompt_chars} tokens ({prompt_chars} in the messages, 0 in the completion). Please reduce the length "
        "of the messages or completion."
    )
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        status_code=400,
    )


def streamed_answer(behaviour: ServerBehaviour, body: dict, words: list[str], finish_reason: str):
    """The answer as server-sent events, word by word, with the switches of `behaviour`."""
    stalls = behaviour.requests <= behaviour.stall_requests
    with_usage = behaviour.stream_usage and (body.get("stream_options") or {}).get("include_usage")

    def event(delta: dict | None = None, finish=None, usage=None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body["model"], "choices": choices}
        return f"data: {json.dumps({**chunk, 'usage': usage} if usage else chunk)}\n\n"

    async def events():
        behaviour.in_flight += 1
        try:
            await asyncio.sleep(behaviour.first_chunk_seconds)
            yield event({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                await asyncio.sleep(behaviour.chunk_seconds)
                if behaviour.interrupt_streams and behaviour.in_flight > 1:
                    behaviour.interrupted += 1
                    yield "data: [DONE]\n\n"
                    return
                if stalls and i == behaviour.stall_after_chunks:
                    deadline = time.monotonic() + 30  # silent, the connection open (30 s at most, or until reset)
                    while behaviour.stall_after_chunks is not None and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    return
                yield event({"content": word if i == 0 else " " + word})
            yield event({}, finish=finish_reason)
            if with_usage:
                yield event(
                    usage={"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
                )
            yield "data: [DONE]\n\n"
        finally:
            behaviour.in_flight -= 1

    return StreamingResponse(events(), media_type="text/event-stream")


def make_app(behaviour: ServerBehaviour) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        if behaviour.models is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me"} for m in behaviour.models]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        behaviour.requests += 1
        behaviour.last_body = body
        behaviour.bodies.append(body)
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
        prompt = body["messages"][-1]["content"]
        prompt_chars = sum(len(m["content"]) for m in body["messages"])
        if behaviour.context_chars is not None and prompt_chars > behaviour.context_chars:
            return context_overflow(behaviour, body, prompt_chars)
        behaviour.served += 1
        if behaviour.answer is not None:
            text, tokens, finish_reason = behaviour.answer(body)
            return {
                "id": f"chatcmpl-{behaviour.requests}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
            }
        if behaviour.empty_answers:
            text = ""
        elif prompt.startswith("Rewrite the solution"):
            text = compressed_solution(prompt)
        else:
            text = teacher_trace(prompt, body.get("seed") or 0)
        words = text.split()
        finish_reason = "length" if len(words) > body["max_tokens"] else "stop"
        text = " ".join(words[: body["max_tokens"]])
        if behaviour.stream and body.get("stream"):
            return streamed_answer(behaviour, body, text.split(), finish_reason)
        return {
            "id": f"chatcmpl-{behaviour.requests}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": len(prompt.split()) + len(text.split()),
            },
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
    config = uvicorn.Config(
        make_app(behaviour), host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=1
    )
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
    traces = generate(
        problems,
        OpenAIBackend("teacher", base_url=teacher_server.base_url),
        SamplingConfig(n=2),
        output_dir=str(tmp_path / "generate"),
    )
    checked = verify(traces, output_dir=str(tmp_path / "verify"))
    compress(checked, ExtractiveCompressor(), tokenizer, output_dir=str(tmp_path / "compress"))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    return str(tmp_path / "compress")
