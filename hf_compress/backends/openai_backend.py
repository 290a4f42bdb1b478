"""The `openai` teacher backend: OpenAI-compatible chat-completions servers (vLLM `serve`, SGLang, TGI, Ollama,
llama.cpp's servers, OpenAI).

One request per sample, so that token counts and finish reasons are exact per trace. Answers are streamed, so that
a server that stops sending is told from one still generating a long answer: a request fails when no answer has
started after `request_timeout` seconds (the server's queue and prompt processing), or when the answer, once
started, is silent for `stall_timeout_seconds`. A server whose streams cannot be used (no token counts in them, or
answers cut when another request arrives: llama-cpp-python's server) is asked without streaming from then on,
said once in the log. Requests are spread over the servers by `ServerPool`; `server_checks` tells the servers'
differences apart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from .base import Generation, TeacherBackend, TeacherRequestError
from .registry import register_backend
from .server_checks import (
    INTERRUPTED_ADVICE,
    StreamProblem,
    check_served_model,
    context_overflow_error,
    is_context_overflow,
)
from .server_pool import PooledServer, RequestsCancelled, ServerFailure, ServerPool, parse_base_urls

logger = logging.getLogger(__name__)

# Answers retried like a server failure: timeouts, conflicts, rate limits, server errors, and 404 (a proxy's
# error page, or a server of the pool that does not serve this model).
RETRIED_STATUS = {404, 408, 409, 429}


def snippet(text: str, limit: int = 300) -> str:
    """`text` as it can be quoted in an error message: at most `limit` characters."""
    return repr(text[:limit]) + (f" ... ({len(text)} characters)" if len(text) > limit else "")


class MalformedAnswerError(ValueError):
    """A server's 200 answer that is not a usable chat completion."""


def _generation(content, reasoning, num_tokens, finish_reason) -> Generation:
    """A reasoning model served with a reasoning parser (vLLM, SGLang) sends its thinking apart from its answer
    (`reasoning_content`, or `reasoning`); the trace puts it back in front, as `<think>` ... `</think>`."""
    if not isinstance(content, (str, type(None))) or not isinstance(reasoning, (str, type(None))):
        raise MalformedAnswerError("`message.content` is not text")
    if content is None and not reasoning:
        raise MalformedAnswerError("`message.content` is null")
    if not isinstance(num_tokens, int):
        raise MalformedAnswerError("no `usage.completion_tokens` (per-trace token counts need it)")
    text = content
    if reasoning:
        text = f"<think>\n{reasoning}" + ("" if content is None else f"\n</think>\n\n{content}")
    return Generation(
        text, num_tokens, finish_reason if isinstance(finish_reason, str) and finish_reason else "unknown"
    )


def parse_chat_completion(body: str) -> Generation:
    """A `Generation` from the raw text of a (not streamed) chat-completions answer, or `MalformedAnswerError`
    saying what is wrong with it."""
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedAnswerError("not JSON") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswerError("no `choices`")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise MalformedAnswerError("no `choices[0].message`")
    usage = data.get("usage")
    return _generation(
        message.get("content"),
        message.get("reasoning_content") or message.get("reasoning"),
        usage.get("completion_tokens") if isinstance(usage, dict) else None,
        choice.get("finish_reason"),
    )


def parse_chat_stream(lines, on_line=lambda: None) -> Generation:
    """A `Generation` from the lines of a streamed answer (server-sent events, `data: {chunk}` ... `data: [DONE]`,
    the last chunk with the usage); `on_line()` is called as each line arrives. A stream with no chunk, one that
    ends with no finish reason (cut) and one without usage raise `StreamProblem`."""
    content, reasoning, finish_reason, usage, chunks = None, "", None, None, 0
    for line in lines:
        on_line()
        if not line.startswith("data:"):
            continue  # blank lines between events, `:` comments, other fields
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            raise MalformedAnswerError(f"a streamed chunk that is not JSON: {snippet(data)}") from None
        if not isinstance(chunk, dict):
            raise MalformedAnswerError(f"a streamed chunk that is not an object: {snippet(data)}")
        if chunk.get("error"):
            raise ServerFailure(f"an error in the stream: {snippet(data)}")
        chunks += 1
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
            if isinstance(delta.get("content"), str):
                content = (content or "") + delta["content"]
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            reasoning += thought if isinstance(thought, str) else ""
            finish_reason = choice.get("finish_reason") or finish_reason
    num_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if chunks == 0:
        raise StreamProblem("empty", "an empty stream (no chunk)")
    if finish_reason is None:
        got = f"{len(content or '') + len(reasoning)} characters" if content or reasoning else "no content"
        raise StreamProblem("interrupted", f"a stream that ended with no finish reason ({got}): it was cut")
    if not isinstance(num_tokens, int):
        raise StreamProblem(
            "no_usage",
            "no `usage.completion_tokens` in the stream (the server ignores `stream_options.include_usage`)",
        )
    return _generation(content, reasoning or None, num_tokens, finish_reason)


class _Exchange:
    """One request's answer, read by a helper thread while the requesting thread watches the silence."""

    def __init__(self):
        self.done = threading.Event()
        self.started = False  # a line of the answer has arrived
        self.last_seen = time.monotonic()
        self.result: Generation | None = None
        self.error: BaseException | None = None
        self.content_type = "none"
        self.body = ""

    def seen(self) -> None:
        self.started, self.last_seen = True, time.monotonic()


class OpenAIBackend(TeacherBackend):
    """Chat completions from OpenAI-compatible servers (vLLM `serve`, SGLang, TGI, Ollama, llama.cpp's servers,
    OpenAI), one request per sample so that token counts and finish reasons are exact per trace.

    `base_url` names one server or several (a list, or a comma-separated string). Up to `max_concurrency`
    requests are in flight per server; each goes to the least-loaded server that is not backing off. A failed
    request (connection error, timeout, a stalled answer, 404, 408, 409, 429, 5xx, or an answer that is not a usable
    chat completion) is retried, on another server when there is one, up to `max_retries` times; a server that
    failed gets no new request for `backoff_seconds * 2**k` (k: its consecutive failures; with jitter). Other 4xx
    answers stop the run at once. After such an error, or an interrupt (Ctrl-C), no new request is sent and those in
    flight are abandoned: `generate` raises at once, and their answers, when they come, are dropped.

    Answers are streamed (`stream=None` or True): a request times out when its answer has not started after
    `request_timeout` seconds, or when it has started and then nothing arrives for `stall_timeout_seconds` (a server
    that stopped sending), however long a steadily progressing answer takes. A server that ignores `stream` and
    answers in one piece is read too. With `stream=None` (the default), a streamed answer without token counts or
    cut short (no finish reason: llama-cpp-python's server cuts the stream in flight when another request arrives)
    turns streaming off for the rest of the run, said once in the log, and is asked again without streaming;
    `stream=True` keeps streaming (such answers are then errors naming the cause), `stream=False` never streams
    (`request_timeout` then bounds each whole answer). A 200 with an empty stream (llama-cpp-python's answer to a
    prompt over its context) is asked again without streaming, whose error says what is wrong.

    Before the first request, each server's `/v1/models` is read: a model name that a server does not list is
    refused (`ModelNotServedError`). A prompt over the model's context is one error (`TeacherRequestError`), never retried.
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | list[str] | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
        request_timeout: float = 600.0,
        stall_timeout_seconds: float = 120.0,
        extra_body: dict | None = None,
        stream: bool | None = None,
    ):
        try:
            import openai
        except ImportError as error:
            raise ImportError(
                "The openai backend needs the `openai` client: `pip install 'hf-efficient-reasoning[openai]'`."
            ) from error
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        if max_retries < 0 or backoff_seconds < 0 or request_timeout <= 0 or stall_timeout_seconds <= 0:
            raise ValueError(
                "max_retries and backoff_seconds must be >= 0, request_timeout and stall_timeout_seconds "
                f"> 0, got {max_retries}, {backoff_seconds}, {request_timeout}, {stall_timeout_seconds}."
            )
        self._openai = openai
        self.model_name = model
        self.base_urls = parse_base_urls(base_url)
        self.request_timeout = request_timeout
        self.stall_timeout_seconds = stall_timeout_seconds
        # The deadlines are watched here (see `_request`); the client's own read timeout only ends the reading thread
        # of an abandoned request. A server that is down is known in seconds (connect).
        timeout = openai.Timeout(max(request_timeout, stall_timeout_seconds), connect=min(request_timeout, 10.0))
        # The client's own retries are off: ours are explicit, counted, spread over the servers and logged.
        servers = [
            PooledServer(url, openai.OpenAI(base_url=url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout))
            for url in self.base_urls
        ]
        self.pool = ServerPool(
            servers, max_concurrency=max_concurrency, max_retries=max_retries, backoff_seconds=backoff_seconds
        )
        self.extra_body = extra_body or {}
        self.stream = stream
        self._streaming = stream is not False  # turned off once, under the lock, when stream=None
        self._lock = threading.Lock()
        self._models_checked = False

    @property
    def servers(self) -> list[PooledServer]:
        return self.pool.servers

    @property
    def max_concurrency(self) -> int:
        return self.pool.max_concurrency

    @property
    def streaming(self) -> bool:
        """Whether the next request is streamed."""
        return self._streaming

    def check_models(self) -> None:
        """Refuse a model name that a server does not list at `/v1/models`, once, before the first request."""
        if not self._models_checked:
            for server in self.servers:
                check_served_model(server.name, server.client, self.model_name)
            self._models_checked = True

    def generate(self, conversations, sampling, seed):
        self.check_models()
        # Conversation i is seeded with seed + i (the contract of `generate`), sample j of it with a distinct seed.
        jobs = [(c, (seed + i) * sampling.n + j) for i, c in enumerate(conversations) for j in range(sampling.n)]
        flat = self.pool.run_all(jobs, lambda server, job, stop: self._request(server, *job, sampling, stop))
        return [flat[i * sampling.n : (i + 1) * sampling.n] for i in range(len(conversations))]

    def _request(
        self,
        server: PooledServer,
        conversation,
        seed: int,
        sampling,
        stop: threading.Event,
        stream: bool | None = None,
    ) -> Generation:
        """One attempt, read by a helper thread while this one watches the deadlines; `ServerFailure` when another
        attempt may succeed. A stalled or cancelled request is abandoned: its thread ends with the client's timeout."""
        stream = self.streaming if stream is None else stream
        exchange = _Exchange()
        threading.Thread(
            target=self._read,
            args=(server, conversation, seed, sampling, exchange, stream),
            daemon=True,
            name="teacher-answer",
        ).start()
        while not exchange.done.wait(timeout=0.1):  # 0.1 s: `stop` (Ctrl-C, a failure elsewhere) is seen soon
            if stop.is_set():
                raise RequestsCancelled
            silent = time.monotonic() - exchange.last_seen
            if exchange.started and silent > self.stall_timeout_seconds:
                raise ServerFailure(
                    f"the answer stalled: nothing for {silent:.0f} s (stall_timeout_seconds="
                    f"{self.stall_timeout_seconds:g}) after it had started"
                )
            if not exchange.started and silent > self.request_timeout:
                raise ServerFailure(f"no answer within request_timeout={self.request_timeout:g} s")
        if isinstance(exchange.error, StreamProblem):
            return self._after_stream_problem(server, conversation, seed, sampling, stop, exchange.error)
        if exchange.error is not None:
            raise self._failure(server, exchange.error, conversation, sampling)
        if exchange.result is None:
            try:
                exchange.result = parse_chat_completion(exchange.body)
            except MalformedAnswerError as error:
                raise ServerFailure(
                    f"a malformed answer ({error}; content-type {exchange.content_type}): {snippet(exchange.body)}"
                ) from None
        return exchange.result

    def _after_stream_problem(
        self, server: PooledServer, conversation, seed: int, sampling, stop: threading.Event, problem: StreamProblem
    ) -> Generation:
        """A streamed answer that cannot be used as it is: asked again without streaming where that can work."""
        if problem.kind == "empty":  # its error (a prompt over the context?) is said only to a plain request
            return self._request(server, conversation, seed, sampling, stop, stream=False)
        if self.stream is None:
            self._stop_streaming(server, problem)
            return self._request(server, conversation, seed, sampling, stop, stream=False)
        if problem.kind == "no_usage":
            raise TeacherRequestError(
                f"The teacher at {server.name} sends no token counts in streamed answers ({problem}); per-trace token "
                "counts need them. Leave --stream unset (it then switches by itself) or pass --stream false."
            )
        raise ServerFailure(f"the streamed answer was unusable: {problem}", advice=INTERRUPTED_ADVICE)

    def _stop_streaming(self, server: PooledServer, problem: StreamProblem) -> None:
        """Plain requests from now on; one at a time to a server that cuts streams for the next request: it answers
        one at a time (llama-cpp-python), and a plain request's time in its queue counts against request_timeout."""
        with self._lock:
            one_at_a_time = problem.kind == "interrupted" and server.max_in_flight != 1
            if one_at_a_time:
                server.max_in_flight = 1
            if self._streaming:
                self._streaming = False
                cause = (
                    "it cuts a streamed answer when another request arrives (llama-cpp-python's --interrupt_requests)"
                    if problem.kind == "interrupted"
                    else "it sends no token counts in streams (llama-cpp-python ignores stream_options.include_usage)"
                )
                logger.warning(
                    "The teacher at %s sent %s: %s. Requests are no longer streamed%s (pass --stream false to start "
                    "so): stall detection is off and request_timeout=%g s bounds each whole answer.",
                    server.name,
                    problem,
                    cause,
                    ", and go to it one at a time" if one_at_a_time else "",
                    self.request_timeout,
                )
            elif one_at_a_time:
                logger.warning(
                    "The teacher at %s cuts streamed answers when another request arrives: requests go to "
                    "it one at a time.",
                    server.name,
                )

    def _read(
        self, server: PooledServer, conversation, seed: int, sampling, exchange: _Exchange, stream: bool = True
    ) -> None:
        # stream_options asks for the token count of each trace; top_k is not an OpenAI parameter: vLLM, SGLang,
        # TGI and llama.cpp read it from the body.
        streamed = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        try:
            with server.client.chat.completions.with_streaming_response.create(
                model=self.model_name,
                messages=conversation,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
                **streamed,
                extra_body={**self.extra_body, **({"top_k": sampling.top_k} if sampling.top_k is not None else {})},
            ) as response:
                exchange.content_type = response.headers.get("content-type", "none")
                if exchange.content_type.startswith("text/event-stream"):
                    exchange.result = parse_chat_stream(response.iter_lines(), exchange.seen)
                else:  # answered in one piece: parsed by the requesting thread
                    exchange.body = response.text()
        except BaseException as error:  # handed to the requesting thread
            exchange.error = error
        finally:
            exchange.done.set()

    def _failure(self, server: PooledServer, error: BaseException, conversation, sampling) -> BaseException:
        """What a reading thread's error means for the request: retry it (`ServerFailure`) or stop the run."""
        openai = self._openai
        if isinstance(error, (ServerFailure, TeacherRequestError)):
            return error
        if isinstance(error, MalformedAnswerError):
            return ServerFailure(f"a malformed streamed answer ({error})")
        if isinstance(error, openai.APIStatusError):
            sent = f"HTTP {error.status_code}: {snippet(error.response.text)}"
            if error.status_code < 500 and is_context_overflow(error.response.text):
                return context_overflow_error(server.name, conversation, sampling.max_new_tokens, sent)
            if error.status_code in RETRIED_STATUS or error.status_code >= 500:
                return ServerFailure(sent)
            return TeacherRequestError(
                f"The teacher at {server.name} rejected the request ({sent}). Retrying cannot help: check the model "
                "name, the API key and the sampling settings (a prompt plus max_new_tokens over the model's context "
                "is a 400)."
            )
        if isinstance(error, openai.APIError):  # connection errors and timeouts included
            return ServerFailure(f"{type(error).__name__}: {error}")
        if isinstance(error, Exception) and type(error).__module__.split(".")[0].startswith(("httpx", "httpcore")):
            return ServerFailure(f"{type(error).__name__}: {error}")  # the connection broke while streaming
        return error


@register_backend("openai", loads_local_files=False)
def openai_from_config(config) -> OpenAIBackend:
    """`--backend openai`: OpenAI-compatible servers (`--base_url`, several for a pool); the model is a served name."""
    return OpenAIBackend(
        config.model,
        base_url=config.base_url,
        api_key=config.api_key or os.environ.get("OPENAI_API_KEY"),
        max_concurrency=config.max_concurrency,
        max_retries=config.max_retries,
        backoff_seconds=config.backoff_seconds,
        request_timeout=config.request_timeout,
        stall_timeout_seconds=config.stall_timeout_seconds,
        stream=config.stream,
    )
