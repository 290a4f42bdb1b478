"""How a teacher samples (`SamplingConfig`) and which teacher to call (`BackendConfig`): the options of `hf-compress
generate` and `compress --compressor llm`, checked when they are built (from the command line, a recipe or Python),
before any model is loaded or any request sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..validation import UsageError, at_least, check_fields, positive, require
from .base import TeacherBackend
from .registry import BACKEND_REGISTRY, BACKENDS
from .server_pool import parse_base_urls


@dataclass
class SamplingConfig:
    """How a teacher samples. `temperature=0` means greedy decoding."""

    n: int = field(default=1, metadata={"help": "Number of samples per problem."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability mass."})
    top_k: int | None = field(
        default=None,
        metadata={"help": "Top-k sampling; 0 turns it off, None keeps the model's default (Qwen3 ships top_k=20)."},
    )
    max_new_tokens: int = field(default=1024, metadata={"help": "Per-request cap on generated tokens."})
    seed: int = field(default=0, metadata={"help": "Base seed; each shard and sample derives its own from it."})

    def __post_init__(self):
        check_fields(self)
        at_least(self, 1, "n", "max_new_tokens")
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        require(0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        if self.top_k is not None:
            require(
                self.top_k >= 0,
                "top_k",
                "an integer >= 0 (0 turns it off; leave it unset for the model's default)",
                self.top_k,
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BackendConfig:
    """Which teacher to call and how; `build()` makes the backend registered under `backend` (see
    `hf_compress.backends.registry`; it needs `model`). Fields not used by a backend are ignored."""

    backend: str = field(default="transformers", metadata={"help": "Teacher backend.", "choices": BACKENDS})
    model: str | None = field(default=None, metadata={"help": "Model path or id (served model name for openai)."})
    tokenizer: str | None = field(default=None, metadata={"help": "transformers: tokenizer path (default: model)."})
    batch_size: int = field(default=16, metadata={"help": "transformers: prompts per generate call."})
    device: str | None = field(default=None, metadata={"help": "transformers: device (default: cuda if available)."})
    base_url: list[str] | None = field(
        default=None,
        metadata={
            "help": "openai: server URL, e.g. http://localhost:8000/v1; several servers space- or comma-separated (a "
            "list in a recipe): requests go to the least-loaded one, and a failed request is retried on another."
        },
    )
    api_key: str | None = field(default=None, metadata={"help": "openai: API key (default: $OPENAI_API_KEY)."})
    max_concurrency: int = field(default=16, metadata={"help": "openai: requests in flight at once, per server."})
    max_retries: int = field(default=5, metadata={"help": "openai: retries of a failed request."})
    backoff_seconds: float = field(default=1.0, metadata={"help": "openai: first retry delay, doubled each time."})
    request_timeout: float = field(
        default=600.0,
        metadata={
            "help": "openai: when no answer has started (the server's queue, the prompt), seconds before a request "
            "times out."
        },
    )
    stall_timeout_seconds: float = field(
        default=120.0,
        metadata={
            "help": "openai: once an answer has started (it is streamed), seconds of silence after which the server is "
            "taken to have stopped and the request is retried; a long answer that keeps coming is never cut."
        },
    )
    stream: bool | None = field(
        default=None,
        metadata={
            "help": "openai: stream the answers (what stall detection reads). Unset: stream, and switch to plain "
            "requests for the rest of the run, said once in the log, when the server's streams have no token "
            "counts or are cut by the next request (llama-cpp-python's server); true: always; false: never."
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs each model replica is split over."})
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "vllm: model replicas, each answering a share of the prompts (GPUs used: tensor x data)."},
    )

    def __post_init__(self):
        self.check(model_required=False)

    def check(self, model_required: bool = True) -> None:
        if self.backend not in BACKEND_REGISTRY:
            raise UsageError(
                f"Unknown backend {self.backend!r}; choose one of {tuple(BACKENDS)} (--backend), or "
                "register yours with hf_compress.backends.register_backend."
            )
        check_fields(self)
        if model_required and not self.model:
            raise UsageError(f"The {self.backend} backend needs a model (--model).")
        at_least(self, 1, "batch_size", "max_concurrency", "tensor_parallel_size", "data_parallel_size")
        at_least(self, 0, "max_retries")
        require(self.backoff_seconds >= 0, "backoff_seconds", "a number >= 0", self.backoff_seconds)
        positive(self, "request_timeout", "stall_timeout_seconds")
        try:
            parse_base_urls(self.base_url)  # a malformed URL list fails here, before any stage starts
        except ValueError as error:
            raise UsageError(f"--base_url: {error}") from None

    @property
    def base_urls(self) -> list[str | None]:
        return parse_base_urls(self.base_url)

    @property
    def model_name(self) -> str:
        return self.model

    def local_paths(self) -> list[tuple[str, str | None]]:
        """(option, path) of what this backend loads from disk (an openai backend's model is a served name)."""
        if not BACKEND_REGISTRY[self.backend].loads_local_files:
            return []
        return [("--model", self.model), ("--tokenizer", self.tokenizer)]

    def describe(self) -> dict:
        """What the built backend's `describe()` will say, known without loading the model."""
        extra = {name: getattr(self, name) for name in BACKEND_REGISTRY[self.backend].cache_fields}
        return {"backend": self.backend, "model": self.model, **extra}

    def build(self) -> TeacherBackend:
        """The backend registered under `self.backend`, built from these options."""
        self.check(model_required=True)
        return BACKEND_REGISTRY[self.backend].from_config(self)


def resolve_backend(backend: TeacherBackend | BackendConfig) -> TeacherBackend:
    """The backend itself, or the one a `BackendConfig` builds (stages build it only when work remains,
    so a cached or finished stage never loads the model)."""
    return backend.build() if isinstance(backend, BackendConfig) else backend


@dataclass
class EvalBackendConfig(BackendConfig):
    """`BackendConfig` for `hf-compress eval`: the same backends, options and server pool as `generate`, with the
    student as `--model` and eval's own default batch."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "The student: a trained folder (full weights or LoRA adapter) for transformers, a model path for "
            "vllm, the served model name for openai."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "transformers: prompts per generate call."})
