"""What OpenAI-compatible servers do differently, told apart so that each error names its cause and its fix.

- The served model names: `/v1/models` lists them (vLLM, SGLang, TGI, Ollama, llama.cpp's servers, OpenAI); a name
  the server does not list is refused before any request (llama-cpp-python answers any name with its one model).
- A prompt over the model's context: a 400 (vLLM, SGLang, llama.cpp, OpenAI) or 422 (TGI) whose message says so,
  or, streamed by llama-cpp-python's server, a 200 with an empty body. Never retried: the same prompt fails again.
- Streams that cannot be used as they are (`StreamProblem`): no `usage` in them (llama-cpp-python ignores
  `stream_options.include_usage`), or cut when another request arrives (llama-cpp-python's `interrupt_requests`,
  on by default: the answer in flight ends with no finish reason).
"""

from __future__ import annotations

import logging
import re

from .base import Conversation, TeacherRequestError

logger = logging.getLogger(__name__)

# The messages servers send for a prompt over the context (vLLM and OpenAI: "maximum context length"; llama.cpp's
# C++ server: "exceed_context_size_error", "exceeds the available context size"; llama-cpp-python: "exceed context
# window"; TGI: "must be <= ... tokens"; SGLang: "longer than the model's context length").
CONTEXT_OVERFLOW = re.compile(
    r"context.length|context.window|context.size|maximum context|context_length_exceeded|exceed_context"
    r"|must have less than .* tokens|must be <= \d+|tokens \+ `?max_new_tokens`? must be",
    re.IGNORECASE,
)

INTERRUPTED_ADVICE = (
    "The server may be cutting concurrent requests: llama.cpp's Python server (llama-cpp-python) ends the answer "
    "in flight when another request arrives. Start it with `--interrupt_requests False`, or pass --max_concurrency "
    "1, or --stream false (plain requests are not cut)"
)


class ModelNotServedError(TeacherRequestError, ValueError):
    """The server lists the models it serves, and the requested one is not among them (a usage error: exit 2)."""


class StreamProblem(ValueError):
    """A streamed answer the server considers whole that cannot be used as it is: `kind` is "no_usage" (no token
    count), "interrupted" (it ended with no finish reason) or "empty" (no chunk at all)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def served_models(client) -> list[str] | None:
    """The model ids the server lists at `/v1/models`, or None when it lists none or cannot say (no such route, an
    error, a server down: the requests will tell)."""
    try:
        page = client.models.list()
        ids = [model.id for model in page.data if isinstance(getattr(model, "id", None), str)]
    except Exception as error:  # noqa: BLE001 - the listing is a courtesy; any failure leaves it to the requests
        logger.debug("No model list from %s: %s", client.base_url, error)
        return None
    return ids or None


def check_served_model(server_name: str, client, model: str) -> None:
    """Refuse `model` before any request when the server lists what it serves and `model` is not in the list
    (Ollama's `name` stands for `name:latest`)."""
    ids = served_models(client)
    if ids is None or model in ids or f"{model}:latest" in ids:
        return
    shown = ", ".join(repr(i) for i in ids[:20]) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")
    raise ModelNotServedError(
        f"The teacher server at {server_name} does not serve the model {model!r}: it serves {shown}. Pass one of "
        "these names as --model (llama.cpp's Python server names its model after the --model path, unless started "
        "with --model_alias)."
    )


def is_context_overflow(message: str) -> bool:
    return bool(CONTEXT_OVERFLOW.search(message))


def context_overflow_error(
    server_name: str, conversation: Conversation, max_new_tokens: int, server_message: str
) -> TeacherRequestError:
    characters = sum(len(str(m.get("content") or "")) for m in conversation)
    return TeacherRequestError(
        f"The prompt is longer than the teacher's context at {server_name}: {characters:,} characters in "
        f"{len(conversation)} message(s), with max_new_tokens={max_new_tokens}. The server said: {server_message}. "
        "Retrying cannot help: shorten the problem, the system prompt or the template, lower max_new_tokens, or "
        "serve the model with a longer context (vLLM --max-model-len, llama.cpp --n_ctx / -c)."
    )
