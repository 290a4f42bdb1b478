"""Teacher backends: one interface over a local transformers model, OpenAI-compatible servers and vLLM.

Every backend turns a list of chat conversations into `n` `Generation`s each, and records for every trace
its text, the number of generated tokens and why generation stopped ("stop" or "length").

    >>> backend = TransformersBackend("runs/sft/model")
    >>> backend.generate([[{"role": "user", "content": "Compute 2 + 3."}]], SamplingConfig(n=2, temperature=0.7))

One client per module: `transformers_backend`, `openai_backend` (with `server_pool`: several servers, retries and
backoff) and `vllm_backend` (with `vllm_replicas`: data-parallel engine processes); `base` holds the interface and
the errors, `config` the options (`SamplingConfig`, `BackendConfig`), `registry` the backends by name: each
client module registers its own (`register_backend`), and so can a user's. Importing this package loads none of the
clients: each backend imports its own when it is built.
"""

from .base import Conversation, Generation, TeacherBackend, TeacherError, TeacherRequestError, TeacherUnavailableError
from .config import BackendConfig, EvalBackendConfig, SamplingConfig, resolve_backend
from .openai_backend import RETRIED_STATUS, MalformedAnswerError, OpenAIBackend, parse_chat_completion, snippet
from .registry import BACKEND_REGISTRY, BACKENDS, RegisteredBackend, register_backend
from .server_pool import PooledServer, RequestsCancelled, ServerFailure, ServerPool, parse_base_urls
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend
from .vllm_replicas import VLLMReplica, chat_generations, replica_devices, serve_replica, split_evenly

__all__ = [
    "BACKENDS",
    "BACKEND_REGISTRY",
    "RETRIED_STATUS",
    "BackendConfig",
    "Conversation",
    "EvalBackendConfig",
    "Generation",
    "MalformedAnswerError",
    "OpenAIBackend",
    "PooledServer",
    "RegisteredBackend",
    "RequestsCancelled",
    "SamplingConfig",
    "ServerFailure",
    "ServerPool",
    "TeacherBackend",
    "TeacherError",
    "TeacherRequestError",
    "TeacherUnavailableError",
    "TransformersBackend",
    "VLLMBackend",
    "VLLMReplica",
    "chat_generations",
    "parse_base_urls",
    "parse_chat_completion",
    "register_backend",
    "replica_devices",
    "resolve_backend",
    "serve_replica",
    "snippet",
    "split_evenly",
]
