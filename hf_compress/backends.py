"""Teacher backends: one interface over a local transformers model, an OpenAI-compatible server and vLLM.

Every backend turns a list of chat conversations into `n` `Generation`s each, and records for every trace
its text, the number of generated tokens and why generation stopped ("stop" or "length").

    >>> backend = TransformersBackend("runs/sft/model")
    >>> backend.generate([[{"role": "user", "content": "Compute 2 + 3."}]], SamplingConfig(n=2, temperature=0.7))
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import threading
import time
import traceback
import weakref
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

Conversation = list[dict]

BACKENDS = ("transformers", "openai", "vllm")


@dataclass
class SamplingConfig:
    """How a teacher samples. `temperature=0` means greedy decoding."""

    n: int = field(default=1, metadata={"help": "Number of samples per problem."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability mass."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling; 0 turns it off, None keeps the "
                                                               "model's default (Qwen3 ships top_k=20)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Per-request cap on generated tokens."})
    seed: int = field(default=0, metadata={"help": "Base seed; each shard and sample derives its own from it."})

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str
    num_tokens: int
    # "stop" (the model ended its turn) or "length" (the token cap cut it); a server may also send another reason
    # ("content_filter", "abort", ...), which is kept as sent, or none, recorded as "unknown".
    finish_reason: str


class TeacherBackend(ABC):
    """A source of chat completions. Subclasses set `kind` and `model_name` (recorded with every trace)."""

    kind: str
    model_name: str

    @abstractmethod
    def generate(self, conversations: list[Conversation], sampling: SamplingConfig, seed: int) -> list[list[Generation]]:
        """`sampling.n` generations for each conversation, in order. `seed` makes the call reproducible:
        conversation i is sampled as if it were the first of a call seeded with `seed + i` where the backend
        allows it (servers), or the call is seeded with `seed` (batched local generation)."""

    def describe(self) -> dict:
        """What identifies this backend's outputs, for the stage cache (no secrets)."""
        return {"backend": self.kind, "model": self.model_name}


# ----------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------


class TransformersBackend(TeacherBackend):
    """A local causal LM, sampled with batched `generate` over left-padded chat prompts."""

    kind = "transformers"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, device: str | None = None, dtype="auto"):
        """`model` is a path / Hub id (loaded with `dtype`, on `device` or the GPU if there is one) or a model
        object (used where it is, unless `device` is given)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            self.model_name = model
            tokenizer = tokenizer if tokenizer is not None else model
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
            device = device or ("cuda" if torch.cuda.is_available() else None)
        else:
            self.model_name = getattr(model, "name_or_path", "") or type(model).__name__
            if tokenizer is None:
                raise ValueError("Pass the tokenizer along with a model object (or give the model as a path).")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` before batched generation.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.to(device) if device else model
        self.model.eval()
        self.batch_size = batch_size

    def describe(self):
        # The batch size changes what is sampled: seeds are set per batch, and padding shifts the numerics.
        return {**super().describe(), "batch_size": self.batch_size}

    def generate(self, conversations, sampling, seed):
        import torch

        results = []
        for start in range(0, len(conversations), self.batch_size):
            torch.manual_seed(seed + start)
            results += self._generate_batch(conversations[start : start + self.batch_size], sampling)
        return results

    def _generate_batch(self, conversations, sampling):
        import torch

        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the last position
        try:
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = padding_side
        inputs = inputs.to(self.model.device)
        do_sample = sampling.temperature > 0
        sample_kwargs = dict(temperature=sampling.temperature, top_p=sampling.top_p) if do_sample else {}
        if do_sample and sampling.top_k is not None:
            sample_kwargs["top_k"] = sampling.top_k
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=do_sample,
                num_return_sequences=sampling.n,
                pad_token_id=self.tokenizer.pad_token_id,
                **sample_kwargs,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        eos_ids = self._eos_token_ids()
        generations = [self._to_generation(row, eos_ids) for row in new_tokens.tolist()]
        return [generations[i * sampling.n : (i + 1) * sampling.n] for i in range(len(conversations))]

    def _eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {e for e in eos + [self.tokenizer.eos_token_id] if e is not None}

    def _to_generation(self, token_ids: list[int], eos_ids: set[int]) -> Generation:
        end = next((i for i, t in enumerate(token_ids) if t in eos_ids), None)
        kept = token_ids if end is None else token_ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # The end-of-turn token counts as generated: it is what the student will be trained to emit.
        num_tokens = len(kept) if end is None else end + 1
        return Generation(text=text, num_tokens=num_tokens, finish_reason="length" if end is None else "stop")


# ----------------------------------------------------------------------------------------------------------
# OpenAI-compatible servers (OpenAI, vLLM `serve`, TGI, SGLang, ...)
# ----------------------------------------------------------------------------------------------------------


class TeacherError(RuntimeError):
    """A teacher server could not give a usable answer."""


class TeacherUnavailableError(TeacherError):
    """The teacher servers could not be reached, or kept failing or sending garbage, after all retries."""


class TeacherRequestError(TeacherError):
    """A server rejected a request (400, 401, 403, 422, ...): retrying it cannot help."""


# Answers retried like a server failure: timeouts, conflicts, rate limits, server errors, and 404 (a proxy's
# error page, or a server of the pool that does not serve this model).
RETRIED_STATUS = {404, 408, 409, 429}


def parse_base_urls(base_url: str | list[str] | tuple[str, ...] | None) -> list[str | None]:
    """Server URLs from a comma-separated string or a list; `[None]` (the client's default) when none is given."""
    if base_url is None or base_url == "" or base_url == []:
        return [None]
    parts = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [url.strip() for part in parts for url in str(part).split(",") if url.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {url!r} is not an http(s) URL; write it in full, e.g. http://{url}.")
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise ValueError(f"base_url lists {repeated} twice; list each server once (raise --max_concurrency instead).")
    return urls or [None]


def snippet(text: str, limit: int = 300) -> str:
    """`text` as it can be quoted in an error message: at most `limit` characters."""
    return repr(text[:limit]) + (f" ... ({len(text)} characters)" if len(text) > limit else "")


class MalformedAnswerError(ValueError):
    """A server's 200 answer that is not a usable chat completion."""


def parse_chat_completion(body: str) -> Generation:
    """A `Generation` from the raw text of a chat-completions answer, or `MalformedAnswerError` saying what is
    wrong with it. A reasoning model served with a reasoning parser (vLLM, SGLang) sends its thinking apart from
    its answer (`reasoning_content`, or `reasoning`); the trace puts it back in front, as `<think>` ... `</think>`.
    """
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
    content = message.get("content")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(content, (str, type(None))) or not isinstance(reasoning, (str, type(None))):
        raise MalformedAnswerError("`message.content` is not text")
    if content is None and not reasoning:
        raise MalformedAnswerError("`message.content` is null")
    usage = data.get("usage")
    num_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(num_tokens, int):
        raise MalformedAnswerError("no `usage.completion_tokens` (per-trace token counts need it)")
    text = content
    if reasoning:
        text = f"<think>\n{reasoning}" + ("" if content is None else f"\n</think>\n\n{content}")
    finish_reason = choice.get("finish_reason")
    return Generation(text, num_tokens, finish_reason if isinstance(finish_reason, str) and finish_reason else "unknown")


class ServerFailure(Exception):
    """One request to one server failed in a way that another try (there or on another server) may fix."""


class RequestsCancelled(Exception):
    """The call was interrupted or failed elsewhere: send no more requests."""


@dataclass(eq=False)
class PooledServer:
    """One OpenAI-compatible server of the pool and what the dispatcher knows of it."""

    url: str | None
    client: object
    in_flight: int = 0
    last_dispatch: int = 0  # ticket of the last request sent here: ties go to the server idle the longest
    failures: int = 0  # consecutive failures, each counted once however many requests were in flight
    epoch: int = 0  # bumped at each counted failure; a request sent before it does not count again
    available_at: float = 0.0  # time.monotonic() before which no request is sent here (backoff)
    last_error: str = ""

    @property
    def name(self) -> str:
        return self.url or str(self.client.base_url)  # the client's default: $OPENAI_BASE_URL or api.openai.com


class OpenAIBackend(TeacherBackend):
    """Chat completions from OpenAI-compatible servers (vLLM `serve`, SGLang, TGI, OpenAI), one request per sample
    so that token counts and finish reasons are exact per trace.

    `base_url` names one server or several (a list, or a comma-separated string). Up to `max_concurrency`
    requests are in flight per server; each goes to the least-loaded server that is not backing off. A failed
    request (connection error, timeout, 404, 408, 409, 429, 5xx, or an answer that is not a usable chat completion)
    is retried, on another server when there is one, up to `max_retries` times; a server that failed gets no new
    request for `backoff_seconds * 2**k` (k: its consecutive failures; with jitter). Other 4xx answers stop the run
    at once. After such an error, or an interrupt (Ctrl-C), no new request is sent and those in flight are
    abandoned: `generate` raises at once, and their answers, when they come, are dropped.
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
        extra_body: dict | None = None,
    ):
        try:
            import openai
        except ImportError as error:
            raise ImportError("The openai backend needs the `openai` client: "
                              "`pip install 'hf-efficient-reasoning[openai]'`.") from error
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        if max_retries < 0 or backoff_seconds < 0 or request_timeout <= 0:
            raise ValueError("max_retries and backoff_seconds must be >= 0 and request_timeout > 0, got "
                             f"{max_retries}, {backoff_seconds}, {request_timeout}.")
        self._openai = openai
        self.model_name = model
        self.base_urls = parse_base_urls(base_url)
        # A long generation may take minutes (request_timeout), but a server that is down is known in seconds.
        timeout = openai.Timeout(request_timeout, connect=min(request_timeout, 10.0))
        # The client's own retries are off: ours are explicit, counted, spread over the servers and logged.
        self.servers = [
            PooledServer(url, openai.OpenAI(base_url=url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout))
            for url in self.base_urls
        ]
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.extra_body = extra_body or {}
        self._dispatch = threading.Condition()
        self._tickets = 0

    def generate(self, conversations, sampling, seed):
        # Conversation i is seeded with seed + i (the contract of `generate`), sample j of it with a distinct seed.
        jobs = [(c, (seed + i) * sampling.n + j) for i, c in enumerate(conversations) for j in range(sampling.n)]
        flat = self._run_all(jobs, sampling)
        return [flat[i * sampling.n : (i + 1) * sampling.n] for i in range(len(conversations))]

    def _run_all(self, jobs: list[tuple[Conversation, int]], sampling: SamplingConfig) -> list[Generation]:
        """Every job's generation, from daemon worker threads: unlike a ThreadPoolExecutor's, they do not hold
        the process open at exit, so an interrupt ends the run at once instead of after the requests in flight."""
        if not jobs:
            return []
        results: list[Generation | None] = [None] * len(jobs)
        pending = iter(range(len(jobs)))
        errors: list[BaseException] = []
        stop, all_done = threading.Event(), threading.Event()
        lock = threading.Lock()
        workers = min(len(jobs), self.max_concurrency * len(self.servers))
        running = [workers]

        def work():
            try:
                while not stop.is_set():
                    with lock:
                        index = next(pending, None)
                    if index is None:
                        return
                    conversation, seed = jobs[index]
                    results[index] = self._complete(conversation, sampling, seed, stop)
            except RequestsCancelled:
                pass
            except BaseException as error:  # the first failure ends the call; the others stop sending
                errors.append(error)
                stop.set()
            finally:
                with lock:
                    running[0] -= 1
                    if running[0] == 0 or errors:
                        all_done.set()

        for i in range(workers):
            threading.Thread(target=work, name=f"teacher-request-{i}", daemon=True).start()
        try:
            while not all_done.wait(timeout=0.1):  # short waits: Ctrl-C is handled at once
                pass
        finally:
            stop.set()  # after an interrupt or a failure, no new request is sent; those in flight are abandoned
        if errors:
            raise errors[0]
        return results

    def _complete(self, conversation, sampling, seed, stop: threading.Event) -> Generation:
        failures = []
        for _ in range(self.max_retries + 1):
            server = self._acquire(stop)
            epoch = server.epoch
            try:
                generation = self._request(server, conversation, sampling, seed)
            except ServerFailure as failure:
                self._release(server, epoch, failed=str(failure))
                failures.append(f"{server.name}: {failure}")
                continue
            except BaseException:
                self._release(server, epoch)
                raise
            self._release(server, epoch)
            return generation
        raise TeacherUnavailableError(self._exhausted_message(failures))

    def _request(self, server: PooledServer, conversation, sampling, seed) -> Generation:
        """One attempt; `ServerFailure` when another attempt may succeed."""
        openai = self._openai
        try:
            raw = server.client.chat.completions.with_raw_response.create(
                model=self.model_name,
                messages=conversation,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
                # top_k is not an OpenAI parameter; vLLM, SGLang and TGI servers read it from the body.
                extra_body={**self.extra_body, **({"top_k": sampling.top_k} if sampling.top_k is not None else {})},
            )
            body, content_type = raw.text, raw.headers.get("content-type", "none")
        except openai.APIConnectionError as error:  # timeouts included
            raise ServerFailure(f"{type(error).__name__}: {error}") from error
        except openai.APIStatusError as error:
            sent = f"HTTP {error.status_code}: {snippet(error.response.text)}"
            if error.status_code in RETRIED_STATUS or error.status_code >= 500:
                raise ServerFailure(sent) from error
            raise TeacherRequestError(
                f"The teacher at {server.name} rejected the request ({sent}). Retrying cannot help: check the model "
                "name, the API key and the sampling settings (a prompt plus max_new_tokens over the model's context "
                "is a 400)."
            ) from error
        except openai.APIError as error:  # any other answer the client could not read
            raise ServerFailure(f"{type(error).__name__}: {error}") from error
        try:
            return parse_chat_completion(body)
        except MalformedAnswerError as error:
            raise ServerFailure(f"a malformed answer ({error}; content-type {content_type}): {snippet(body)}") from None

    def _acquire(self, stop: threading.Event) -> PooledServer:
        """The least-loaded server that has room and is not backing off; waits while there is none."""
        with self._dispatch:
            while True:
                if stop.is_set():
                    raise RequestsCancelled
                now = time.monotonic()
                ready = [s for s in self.servers if s.in_flight < self.max_concurrency and s.available_at <= now]
                if ready:
                    server = min(ready, key=lambda s: (s.in_flight, s.last_dispatch))
                    self._tickets += 1
                    server.in_flight, server.last_dispatch = server.in_flight + 1, self._tickets
                    return server
                backing_off = [s.available_at - now for s in self.servers if s.available_at > now]
                self._dispatch.wait(timeout=min([0.1, *backing_off]))  # 0.1 s at most: `stop` is seen soon

    def _release(self, server: PooledServer, epoch: int, failed: str | None = None) -> None:
        with self._dispatch:
            server.in_flight -= 1
            if failed is None:
                server.failures = 0
            elif epoch == server.epoch:  # the first failure of the requests sent since the last one counts
                server.failures += 1
                server.epoch += 1
                server.last_error = failed
                delay = self.backoff_seconds * 2 ** min(server.failures - 1, self.max_retries) * (0.5 + random.random())
                server.available_at = time.monotonic() + delay
                logger.warning("Teacher server %s failed (%s); no request goes there for %.2f s.", server.name,
                               failed, delay)
            self._dispatch.notify_all()

    def _exhausted_message(self, failures: list[str]) -> str:
        pool = ""
        if len(self.servers) > 1:
            pool = " Servers: " + "; ".join(f"{s.name} ({s.last_error[:150] or 'no failure'})" for s in self.servers)
            pool += "."
        return (
            f"A teacher request failed {len(failures)} times (last: {failures[-1]}).{pool} Check that the server is "
            "up, that base_url ends in /v1 and that the model name is right; shards already written are kept, so "
            "rerun the same command to resume."
        )


# ----------------------------------------------------------------------------------------------------------
# vLLM offline engine
# ----------------------------------------------------------------------------------------------------------


class VLLMBackend(TeacherBackend):
    """vLLM's offline `LLM.chat` engine; only available when `vllm` is installed (`pip install .[vllm]`).

    `tensor_parallel_size` GPUs hold one copy of the model. With `data_parallel_size > 1` there are that many
    copies, each a vLLM engine in its own process on its own GPUs (vLLM's `LLM` does not run data parallel in one
    process), and each `generate` call gives every copy a contiguous share of the prompts. Requests are seeded
    one by one, so the split does not change what is sampled.
    """

    kind = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, data_parallel_size: int = 1, **llm_kwargs):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "The vllm backend needs the `vllm` package: `pip install 'hf-efficient-reasoning[vllm]'`. "
                "Without it, use backend='transformers', or serve the model and use backend='openai'."
            ) from error
        self._vllm = vllm
        self.model_name = model
        llm_kwargs = {"tensor_parallel_size": tensor_parallel_size, **llm_kwargs}
        if data_parallel_size == 1:
            self.llm, self.replicas = vllm.LLM(model=model, **llm_kwargs), []
        else:
            self.llm = None
            self.replicas = [VLLMReplica(model, llm_kwargs, devices)
                             for devices in replica_devices(data_parallel_size, tensor_parallel_size)]
            for replica in self.replicas:
                replica.wait_ready()

    def generate(self, conversations, sampling, seed):
        params = dict(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            **({"top_k": sampling.top_k or -1} if sampling.top_k is not None else {}),  # vLLM: -1 turns it off
        )
        if not self.replicas:
            return chat_generations(self.llm, self._vllm, conversations, params)
        shares = split_evenly(conversations, len(self.replicas))
        for replica, share in zip(self.replicas, shares):
            replica.send(share, params)  # every replica works at once ...
        return [generations for replica in self.replicas for generations in replica.receive()]  # ... in order

    def close(self) -> None:
        """Stop the replica processes (also done at exit)."""
        for replica in self.replicas:
            replica.close()


def chat_generations(llm, vllm, conversations, params: dict) -> list[list[Generation]]:
    outputs = llm.chat(conversations, vllm.SamplingParams(**params), use_tqdm=False)
    return [[Generation(o.text, len(o.token_ids), o.finish_reason or "unknown") for o in out.outputs] for out in outputs]


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` contiguous pieces whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def replica_devices(data_parallel_size: int, tensor_parallel_size: int) -> list[str]:
    """`CUDA_VISIBLE_DEVICES` for each replica: consecutive groups of `tensor_parallel_size` of the GPUs this
    process sees (its own `CUDA_VISIBLE_DEVICES`, else every GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    needed = data_parallel_size * tensor_parallel_size
    if len(devices) < needed:
        raise ValueError(
            f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size} needs {needed} "
            f"GPUs, but this process sees {len(devices)} ({devices}); lower one of them or set CUDA_VISIBLE_DEVICES."
        )
    return [",".join(devices[r * tensor_parallel_size : (r + 1) * tensor_parallel_size]) for r in range(data_parallel_size)]


def serve_replica(model: str, llm_kwargs: dict, devices: str, connection) -> None:
    """A replica process: one vLLM engine on `devices`, answering (conversations, sampling params) until None."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        import vllm

        llm = vllm.LLM(model=model, **llm_kwargs)
        connection.send(("ready", None))
        while (request := connection.recv()) is not None:
            connection.send(("done", chat_generations(llm, vllm, *request)))
    except EOFError:
        pass  # the driving process is gone
    except Exception:
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc()))


class VLLMReplica:
    """One vLLM engine in a child process (spawned: CUDA cannot be forked), driven over a pipe."""

    def __init__(self, model: str, llm_kwargs: dict, devices: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.devices = devices
        self.connection, child_end = context.Pipe()
        # Not a daemon: vLLM starts processes of its own, which a daemon process may not.
        self.process = context.Process(target=serve_replica, args=(model, llm_kwargs, devices, child_end),
                                       name=f"vllm-replica-{devices}")
        self.process.start()
        child_end.close()
        self._finalizer = weakref.finalize(self, VLLMReplica._stop, self.process, self.connection)
        # Registered after multiprocessing's own exit hook, so it runs first: that hook waits for the replica.
        atexit.register(self._finalizer)

    def wait_ready(self) -> None:
        self._answer()

    def send(self, conversations: list, params: dict) -> None:
        self.connection.send((conversations, params))

    def receive(self) -> list[list[Generation]]:
        return self._answer()

    def _answer(self):
        try:
            status, payload = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"The vLLM replica on GPUs {self.devices} exited (exit code "
                               f"{self.process.exitcode}); see its log above.") from None
        if status == "error":
            raise RuntimeError(f"The vLLM replica on GPUs {self.devices} failed:\n{payload}")
        return payload

    def close(self) -> None:
        self._finalizer()

    @staticmethod
    def _stop(process, connection) -> None:
        # At exit or on close: ask politely, then make sure (an interrupted replica may be mid-generation).
        with contextlib.suppress(OSError, ValueError):
            connection.send(None)
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


@dataclass
class BackendConfig:
    """Which teacher to call and how; `build()` makes the backend. Fields not used by a backend are ignored."""

    backend: str = field(default="transformers", metadata={"help": "Teacher backend.", "choices": BACKENDS})
    model: str | None = field(default=None, metadata={"help": "Model path or id (served model name for openai)."})
    tokenizer: str | None = field(default=None, metadata={"help": "transformers: tokenizer path (default: model)."})
    batch_size: int = field(default=16, metadata={"help": "transformers: prompts per generate call."})
    device: str | None = field(default=None, metadata={"help": "transformers: device (default: cuda if available)."})
    base_url: str | list[str] | None = field(default=None, metadata={
        "nargs": "+",
        "help": "openai: server URL, e.g. http://localhost:8000/v1; several servers space- or comma-separated (a "
                "list in a recipe): requests go to the least-loaded one, and a failed request is retried on another."})
    api_key: str | None = field(default=None, metadata={"help": "openai: API key (default: $OPENAI_API_KEY)."})
    max_concurrency: int = field(default=16, metadata={"help": "openai: requests in flight at once, per server."})
    max_retries: int = field(default=5, metadata={"help": "openai: retries of a failed request."})
    backoff_seconds: float = field(default=1.0, metadata={"help": "openai: first retry delay, doubled each time."})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds before a request times out."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs each model replica is split over."})
    data_parallel_size: int = field(default=1, metadata={"help": "vllm: model replicas, each answering a share of "
                                                                   "the prompts (GPUs used: tensor x data)."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown backend {self.backend!r}; choose one of {BACKENDS}.")
        if not self.model:
            raise ValueError(f"The {self.backend} backend needs a model (--model).")
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}.")
        parse_base_urls(self.base_url)  # a malformed URL list fails here, before any stage starts

    @property
    def base_urls(self) -> list[str | None]:
        return parse_base_urls(self.base_url)

    @property
    def model_name(self) -> str:
        return self.model

    def describe(self) -> dict:
        """What the built backend's `describe()` will say, known without loading the model."""
        extra = {"batch_size": self.batch_size} if self.backend == "transformers" else {}
        return {"backend": self.backend, "model": self.model, **extra}

    def build(self) -> TeacherBackend:
        if self.backend == "transformers":
            return TransformersBackend(self.model, self.tokenizer, batch_size=self.batch_size, device=self.device)
        if self.backend == "openai":
            return OpenAIBackend(
                self.model,
                base_url=self.base_url,
                api_key=self.api_key or os.environ.get("OPENAI_API_KEY"),
                max_concurrency=self.max_concurrency,
                max_retries=self.max_retries,
                backoff_seconds=self.backoff_seconds,
                request_timeout=self.request_timeout,
            )
        return VLLMBackend(self.model, tensor_parallel_size=self.tensor_parallel_size,
                           data_parallel_size=self.data_parallel_size)


def resolve_backend(backend: TeacherBackend | BackendConfig) -> TeacherBackend:
    """The backend itself, or the one a `BackendConfig` builds (stages build it only when work remains,
    so a cached or finished stage never loads the model)."""
    return backend.build() if isinstance(backend, BackendConfig) else backend
