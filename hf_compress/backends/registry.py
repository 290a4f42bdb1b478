"""Teacher backends by name: `--backend NAME` builds the backend registered under NAME from a `BackendConfig`.

Each backend registers itself in its own module, as token scorers do in hf_flowcredit:

    @register_backend("my-server", loads_local_files=False)
    def my_server_from_config(config: BackendConfig) -> TeacherBackend:
        return MyServerBackend(config.model, base_url=config.base_url)

Once the module defining it is imported, `BackendConfig(backend="my-server", model=...)`, `hf-compress generate
--backend my-server` and a recipe's `backend: my-server` build it (for the command line, import it from a module
that is imported first, e.g. a recipe's `input_builder` module, or a `sitecustomize`). `BACKENDS`, the choices of
`--backend`, always lists the registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import TeacherBackend
    from .config import BackendConfig


@dataclass(frozen=True)
class RegisteredBackend:
    name: str
    from_config: Callable[[BackendConfig], TeacherBackend]  # builds the backend (loads the model, opens clients)
    loads_local_files: bool  # `--model` / `--tokenizer` may be local folders (not for a server's served model name)
    cache_fields: tuple[str, ...]  # BackendConfig fields besides `model` that change its outputs (the stage cache)


BACKEND_REGISTRY: dict[str, RegisteredBackend] = {}
BACKENDS = BACKEND_REGISTRY.keys()  # a live view: the names registered so far, the choices of `--backend`


def register_backend(name: str, *, loads_local_files: bool = True, cache_fields: tuple[str, ...] = ()):
    """Register `from_config(config: BackendConfig) -> TeacherBackend` (decorated) as the backend `name`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"A backend name must be a non-empty string, got {name!r}.")

    def decorator(from_config: Callable[[BackendConfig], TeacherBackend]):
        if name in BACKEND_REGISTRY and BACKEND_REGISTRY[name].from_config is not from_config:
            raise ValueError(f"A teacher backend named {name!r} is registered already; choose another name.")
        BACKEND_REGISTRY[name] = RegisteredBackend(name, from_config, loads_local_files, tuple(cache_fields))
        return from_config

    return decorator
