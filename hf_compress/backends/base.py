"""What every teacher backend shares: the `Generation` it returns, the `TeacherBackend` interface, and the errors a
teacher server can end a run with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SamplingConfig

Conversation = list[dict]


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
    def generate(
        self, conversations: list[Conversation], sampling: SamplingConfig, seed: int
    ) -> list[list[Generation]]:
        """`sampling.n` generations for each conversation, in order. `seed` makes the call reproducible:
        conversation i is sampled as if it were the first of a call seeded with `seed + i` where the backend
        allows it (servers), or the call is seeded with `seed` (batched local generation)."""

    def describe(self) -> dict:
        """What identifies this backend's outputs, for the stage cache (no secrets)."""
        return {"backend": self.kind, "model": self.model_name}


class TeacherError(RuntimeError):
    """A teacher server could not give a usable answer."""


class TeacherUnavailableError(TeacherError):
    """The teacher servers could not be reached, or kept failing, stalling or sending garbage, after all retries."""


class TeacherRequestError(TeacherError):
    """A server rejected a request (400, 401, 403, 422, ...): retrying it cannot help."""
