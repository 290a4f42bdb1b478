"""Teacher backends: one interface over a local transformers model, an OpenAI-compatible server and vLLM.

Every backend turns a list of chat conversations into `n` `Generation`s each, and records for every trace
its text, the number of generated tokens and why generation stopped ("stop" or "length").

    >>> backend = TransformersBackend("runs/sft/model")
    >>> backend.generate([[{"role": "user", "content": "Compute 2 + 3."}]], SamplingConfig(n=2, temperature=0.7))
"""

from __future__ import annotations

import logging
import os
import random
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
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
    finish_reason: str  # "stop" (the model ended its turn) or "length" (the token cap cut it)


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


class TeacherUnavailableError(RuntimeError):
    """The teacher server could not be reached, or kept failing, after all retries."""


class OpenAIBackend(TeacherBackend):
    """Chat completions from any OpenAI-compatible server, one request per sample so that token counts and
    finish reasons are exact per trace. Requests run concurrently; transient failures (connection errors,
    timeouts, 429 and 5xx answers) are retried with exponential backoff and jitter."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
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
        self.model_name = model
        self.base_url = base_url
        # The client's own retries are off: ours are explicit, counted and logged.
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=request_timeout
        )
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.extra_body = extra_body or {}
        self._retryable = (
            openai.APIConnectionError,  # includes timeouts
            openai.RateLimitError,
            openai.InternalServerError,
        )

    def generate(self, conversations, sampling, seed):
        # Conversation i is seeded with seed + i (the contract of `generate`), sample j of it with a distinct seed.
        jobs = [(c, (seed + i) * sampling.n + j) for i, c in enumerate(conversations) for j in range(sampling.n)]
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            flat = list(pool.map(lambda job: self._complete(job[0], sampling, job[1]), jobs))
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure, requests not yet sent are dropped
        return [flat[i * sampling.n : (i + 1) * sampling.n] for i in range(len(conversations))]

    def _complete(self, conversation, sampling, seed) -> Generation:
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model_name,
                    messages=conversation,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens,
                    seed=seed,
                    # top_k is not an OpenAI parameter; vLLM, SGLang and TGI servers read it from the body.
                    extra_body={**self.extra_body, **({"top_k": sampling.top_k} if sampling.top_k is not None else {})},
                )
                break
            except self._retryable as error:
                if attempt == self.max_retries:
                    raise TeacherUnavailableError(
                        f"The teacher at {self.base_url or 'api.openai.com'} failed {attempt + 1} times "
                        f"(last error: {type(error).__name__}: {error}). Check that the server is up and the "
                        "model name is right; shards already written are kept, so rerun the same command to resume."
                    ) from error
                delay = self.backoff_seconds * 2**attempt * (0.5 + random.random())
                logger.warning("Teacher request failed (%s); retry %d in %.2fs", error, attempt + 1, delay)
                time.sleep(delay)
        choice = response.choices[0]
        text = choice.message.content or ""
        num_tokens = response.usage.completion_tokens if response.usage else None
        if num_tokens is None:
            raise TeacherUnavailableError("The server's answer has no `usage.completion_tokens`; per-trace token "
                                          "counts need it (vLLM, TGI and OpenAI all send it).")
        return Generation(text=text, num_tokens=num_tokens, finish_reason=choice.finish_reason or "stop")


# ----------------------------------------------------------------------------------------------------------
# vLLM offline engine
# ----------------------------------------------------------------------------------------------------------


class VLLMBackend(TeacherBackend):
    """vLLM's offline `LLM.chat` engine; only available when `vllm` is installed (`pip install .[vllm]`)."""

    kind = "vllm"

    def __init__(self, model: str, **llm_kwargs):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "The vllm backend needs the `vllm` package: `pip install 'hf-efficient-reasoning[vllm]'`. "
                "Without it, use backend='transformers', or serve the model and use backend='openai'."
            ) from error
        self._vllm = vllm
        self.model_name = model
        self.llm = vllm.LLM(model=model, **llm_kwargs)

    def generate(self, conversations, sampling, seed):
        params = self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            **({"top_k": sampling.top_k or -1} if sampling.top_k is not None else {}),  # vLLM: -1 turns it off
        )
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        return [
            [Generation(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop") for o in out.outputs]
            for out in outputs
        ]


@dataclass
class BackendConfig:
    """Which teacher to call and how; `build()` makes the backend. Fields not used by a backend are ignored."""

    backend: str = field(default="transformers", metadata={"help": "Teacher backend.", "choices": BACKENDS})
    model: str | None = field(default=None, metadata={"help": "Model path or id (served model name for openai)."})
    tokenizer: str | None = field(default=None, metadata={"help": "transformers: tokenizer path (default: model)."})
    batch_size: int = field(default=16, metadata={"help": "transformers: prompts per generate call."})
    device: str | None = field(default=None, metadata={"help": "transformers: device (default: cuda if available)."})
    base_url: str | None = field(default=None, metadata={"help": "openai: server URL, e.g. http://localhost:8000/v1."})
    api_key: str | None = field(default=None, metadata={"help": "openai: API key (default: $OPENAI_API_KEY)."})
    max_concurrency: int = field(default=16, metadata={"help": "openai: requests in flight at once."})
    max_retries: int = field(default=5, metadata={"help": "openai: retries of a failed request."})
    backoff_seconds: float = field(default=1.0, metadata={"help": "openai: first retry delay, doubled each time."})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds before a request times out."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown backend {self.backend!r}; choose one of {BACKENDS}.")
        if not self.model:
            raise ValueError(f"The {self.backend} backend needs a model (--model).")

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
        return VLLMBackend(self.model)


def resolve_backend(backend: TeacherBackend | BackendConfig) -> TeacherBackend:
    """The backend itself, or the one a `BackendConfig` builds (stages build it only when work remains,
    so a cached or finished stage never loads the model)."""
    return backend.build() if isinstance(backend, BackendConfig) else backend
