"""Circuit breaker transitions and the worker pool's choice of candidates."""

from __future__ import annotations

import pytest

from pdcore.router.workers import Circuit, CircuitBreaker, WorkerPool


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_consecutive_failures():
    b = CircuitBreaker(threshold=3, cooldown_s=5, clock=Clock())
    b.failure()
    b.failure()
    assert b.allows() and b.state is Circuit.CLOSED
    b.failure()
    assert b.state is Circuit.OPEN and not b.allows()


def test_a_success_resets_the_failure_count():
    b = CircuitBreaker(threshold=2, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state is Circuit.CLOSED, "failures must be consecutive to open the circuit"


def test_open_breaker_half_opens_after_cooldown_then_closes_on_success():
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown_s=5, clock=clock)
    b.failure()
    clock.now += 4.9
    assert not b.allows()
    clock.now += 0.2
    assert b.allows() and b.state is Circuit.HALF_OPEN
    b.success()
    assert b.state is Circuit.CLOSED


def test_half_open_failure_reopens_at_once():
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(3):
        b.failure()
    clock.now += 6
    assert b.allows()
    b.failure()
    assert b.state is Circuit.OPEN and not b.allows(), "one failed trial must reopen"


def test_open_worker_is_readmitted_by_a_success():
    pool = WorkerPool(lambda: CircuitBreaker(threshold=1, cooldown_s=60))
    w = pool.add("http://a:1", "prefill")
    w.breaker.failure()
    assert pool.available("prefill") == [] and not w.healthy
    w.breaker.success()
    assert pool.available("prefill") == [w] and w.healthy


def test_available_prefers_workers_not_excluded_but_falls_back():
    pool = WorkerPool()
    a = pool.add("http://a:1", "decode")
    b = pool.add("http://b:1", "decode")
    assert pool.available("decode", {a.url}) == [b]
    assert pool.available("decode", {a.url, b.url}) == [a, b]


def test_pool_rejects_duplicates_and_unknown_roles():
    pool = WorkerPool()
    pool.add("http://a:1/", "decode")
    with pytest.raises(KeyError, match="already registered"):
        pool.add("http://a:1", "decode")
    with pytest.raises(ValueError, match="Supported: prefill, decode, regular"):
        pool.add("http://b:1", "mixed")
