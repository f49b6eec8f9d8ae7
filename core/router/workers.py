"""Workers the router knows: URL, role, bootstrap port, API key, circuit breaker, load."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlparse

from pdcore.router.transfer_rate import TransferRate

ROLES = ("prefill", "decode", "regular")


class Circuit(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Keeps a failing worker out of rotation, then lets one trial through.

    Opens after ``threshold`` consecutive failures; after ``cooldown_s`` it is
    half-open (requests may try it); a success closes it (readmitted), a failure
    while half-open opens it again at once.
    """

    def __init__(
        self, threshold: int = 3, cooldown_s: float = 10.0, clock: Callable = time.monotonic
    ):
        self.threshold = max(1, threshold)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = Circuit.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.ever_succeeded = False  # a health check or request has succeeded

    def allows(self) -> bool:
        if self.state is Circuit.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = Circuit.HALF_OPEN
        return self.state is not Circuit.OPEN

    def success(self) -> None:
        self.state, self.failures = Circuit.CLOSED, 0
        self.ever_succeeded = True

    def failure(self) -> None:
        self.failures += 1
        if self.state is Circuit.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at = Circuit.OPEN, self.clock()


@dataclass(eq=False)
class Worker:
    url: str
    role: str = "regular"
    bootstrap_port: int | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    in_flight: int = 0  # this router's requests on the worker now
    reported_load: int = 0  # running + waiting, from its /get_server_info
    last_error: str | None = None
    pd: dict = field(default_factory=dict)  # its PD queue stats, from /get_server_info
    kv_rate: TransferRate = field(default_factory=TransferRate)
    api_key: str | None = field(default=None, repr=False)  # the worker's --api-key

    def __post_init__(self) -> None:
        self._auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None

    def auth(self, headers: dict) -> dict:
        """``headers`` for a call to this worker: with its key if it has one (replacing
        whatever Authorization a client sent), else as they are."""
        return headers if self._auth is None else {**headers, **self._auth}

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def load(self) -> int:
        return self.in_flight + self.reported_load

    @property
    def healthy(self) -> bool:
        return self.breaker.state is not Circuit.OPEN

    @property
    def confirmed(self) -> bool:
        """Healthy and known to answer: a health check or a request has succeeded
        (a worker nobody reached yet is healthy by its breaker, not confirmed)."""
        return self.healthy and self.breaker.ever_succeeded

    def observe_pd(self, stats: dict) -> None:
        """Keep a worker's PD stats (``disaggregation`` of its server info) and KV rate."""
        self.pd = stats
        sent = stats.get("bytes_transferred")
        if isinstance(sent, int):
            self.kv_rate.update(sent)

    def describe(self) -> dict:
        return {
            "url": self.url,
            "role": self.role,
            "bootstrap_port": self.bootstrap_port,
            "healthy": self.healthy,
            "confirmed": self.confirmed,
            "circuit": self.breaker.state.value,
            "consecutive_failures": self.breaker.failures,
            "in_flight": self.in_flight,
            "load": self.load,
            "last_error": self.last_error,
            "kv_transfer_gb_s": self.kv_rate.gb_s,
        }


class WorkerPool:
    """All workers by URL; ``available(role)`` is what policies choose from."""

    def __init__(
        self,
        breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker,
        api_key: str | None = None,
    ):
        self._workers: dict[str, Worker] = {}
        self._breaker = breaker_factory
        self._api_key = api_key  # workers added without their own key get this one

    def add(
        self, url: str, role: str, bootstrap_port: int | None = None, api_key: str | None = None
    ) -> Worker:
        url = url.rstrip("/")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}. Supported: {', '.join(ROLES)}")
        if url in self._workers:
            raise KeyError(f"worker {url} is already registered")
        worker = Worker(
            url, role, bootstrap_port, self._breaker(), api_key=api_key or self._api_key
        )
        self._workers[url] = worker
        return worker

    def remove(self, url: str) -> Worker:
        return self._workers.pop(url.rstrip("/"))

    def get(self, url: str) -> Worker | None:
        return self._workers.get(url.rstrip("/"))

    def all(self) -> list[Worker]:
        return list(self._workers.values())

    def of_role(self, role: str) -> list[Worker]:
        return [w for w in self._workers.values() if w.role == role]

    def available(self, role: str, exclude: set[str] = frozenset()) -> list[Worker]:
        """Workers of ``role`` whose breaker admits requests; ``exclude`` only if others exist."""
        ready = [w for w in self.of_role(role) if w.breaker.allows()]
        fresh = [w for w in ready if w.url not in exclude]
        return fresh or ready
