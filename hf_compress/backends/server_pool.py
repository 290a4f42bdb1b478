"""A pool of OpenAI-compatible servers: requests spread over them from worker threads, retried, with backoff.

Up to `max_concurrency` requests are in flight per server; each goes to the least-loaded server that is not
backing off. A request that fails in a way another try may fix (`ServerFailure`) is retried, on another server
when there is one, up to `max_retries` times; a server that failed gets no new request for
`backoff_seconds * 2**k` (k: its consecutive failures; with jitter). Any other error ends the call at once: no new
request is sent and those in flight are abandoned.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import TeacherUnavailableError

logger = logging.getLogger(__name__)


class ServerFailure(Exception):
    """One request to one server failed in a way that another try (there or on another server) may fix. `advice`,
    when the failure points to its cause, replaces the generic advice of the error that ends a run of them."""

    def __init__(self, message: str, advice: str = ""):
        super().__init__(message)
        self.advice = advice


class RequestsCancelled(Exception):
    """The call was interrupted or failed elsewhere: send no more requests."""


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
    max_in_flight: int | None = None  # below the pool's max_concurrency for a server that answers one at a time

    @property
    def name(self) -> str:
        return self.url or str(self.client.base_url)  # the client's default: $OPENAI_BASE_URL or api.openai.com


class ServerPool:
    """Dispatches jobs over `servers`; `attempt(server, job, stop)` makes one try and raises `ServerFailure` when
    another try may succeed."""

    def __init__(self, servers: list[PooledServer], *, max_concurrency: int, max_retries: int, backoff_seconds: float):
        self.servers = servers
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self._dispatch = threading.Condition()
        self._tickets = 0

    def run_all(self, jobs: list, attempt: Callable) -> list:
        """Every job's result, in order, from daemon worker threads: unlike a ThreadPoolExecutor's, they do not hold
        the process open at exit, so an interrupt ends the run at once instead of after the requests in flight."""
        if not jobs:
            return []
        results: list = [None] * len(jobs)
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
                    results[index] = self.call(jobs[index], attempt, stop)
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

    def call(self, job, attempt: Callable, stop: threading.Event):
        """One job, tried up to `max_retries + 1` times; `TeacherUnavailableError` when every try failed."""
        failures, advice = [], ""
        for _ in range(self.max_retries + 1):
            server = self.acquire(stop)
            epoch = server.epoch
            try:
                result = attempt(server, job, stop)
            except ServerFailure as failure:
                self.release(server, epoch, failed=str(failure))
                failures.append(f"{server.name}: {failure}")
                advice = failure.advice or advice
                continue
            except BaseException:
                self.release(server, epoch)
                raise
            self.release(server, epoch)
            return result
        raise TeacherUnavailableError(self.exhausted_message(failures, advice))

    def acquire(self, stop: threading.Event) -> PooledServer:
        """The least-loaded server that has room and is not backing off; waits while there is none."""
        with self._dispatch:
            while True:
                if stop.is_set():
                    raise RequestsCancelled
                now = time.monotonic()
                ready = [
                    s
                    for s in self.servers
                    if s.in_flight < min(self.max_concurrency, s.max_in_flight or self.max_concurrency)
                    and s.available_at <= now
                ]
                if ready:
                    server = min(ready, key=lambda s: (s.in_flight, s.last_dispatch))
                    self._tickets += 1
                    server.in_flight, server.last_dispatch = server.in_flight + 1, self._tickets
                    return server
                backing_off = [s.available_at - now for s in self.servers if s.available_at > now]
                self._dispatch.wait(timeout=min([0.1, *backing_off]))  # 0.1 s at most: `stop` is seen soon

    def release(self, server: PooledServer, epoch: int, failed: str | None = None) -> None:
        with self._dispatch:
            server.in_flight -= 1
            if failed is None:
                server.failures = 0
            elif epoch == server.epoch:  # the first failure of the requests sent since the last one counts
                server.failures += 1
                server.epoch += 1
                server.last_error = failed
                delay = (
                    self.backoff_seconds * 2 ** min(server.failures - 1, self.max_retries) * (0.5 + random.random())
                )
                server.available_at = time.monotonic() + delay
                logger.warning(
                    "Teacher server %s failed (%s); no request goes there for %.2f s.", server.name, failed, delay
                )
            self._dispatch.notify_all()

    def exhausted_message(self, failures: list[str], advice: str = "") -> str:
        pool = ""
        if len(self.servers) > 1:
            pool = " Servers: " + "; ".join(f"{s.name} ({s.last_error[:150] or 'no failure'})" for s in self.servers)
            pool += "."
        advice = advice or "Check that the server is up, that base_url ends in /v1 and that the model name is right"
        return (
            f"A teacher request failed {len(failures)} times (last: {failures[-1]}).{pool} {advice}; shards already "
            "written are kept, so rerun the same command to resume."
        )
