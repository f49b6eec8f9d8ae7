"""The router's per-worker KV rate, per-worker gauges and ``/dashboard/state``, without servers.

The live cluster and the Chromium check are in ``test_metrics_dashboard.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdcore.router.dashboard import state
from pdcore.router.metrics import RouterMetrics
from pdcore.router.transfer_rate import TransferRate
from pdcore.router.workers import WorkerPool


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_bytes_between_two_samples_over_their_interval():
    clock = Clock()
    rate = TransferRate(clock=clock, wall=lambda: 1.0)
    assert rate.update(1_000_000_000) == 0.0, "one sample gives no rate"
    clock.now += 2.0
    assert rate.update(5_000_000_000) == pytest.approx(2.0)
    assert list(rate.history) == [(1.0, pytest.approx(2.0))]


def test_a_restarted_worker_counts_from_zero_not_negative():
    clock = Clock()
    rate = TransferRate(clock=clock)
    rate.update(9_000_000_000)
    clock.now += 1.0
    assert rate.update(1_000_000_000) == pytest.approx(1.0), "the new total is what it moved"


def test_history_is_bounded():
    clock = Clock()
    rate = TransferRate(history=3, clock=clock)
    for i in range(10):
        clock.now += 1
        rate.update(i * 1000)
    assert len(rate.history) == 3


def pool_with_pd_workers() -> WorkerPool:
    pool = WorkerPool()
    prefill = pool.add("http://p:1", "prefill", 8998)
    pool.add("http://d:2", "decode")
    prefill.in_flight = 2
    prefill.observe_pd({"mode": "prefill", "bootstrap_queue": 1, "bytes_transferred": 0,
                        "transfer_failed": 0, "notices_in_band": 0})  # fmt: skip
    return pool


def test_state_groups_workers_by_role_with_their_pd_stats():
    args = SimpleNamespace(pd_disaggregation=True, health_check_interval_secs=5.0)
    got = state(pool_with_pd_workers(), args, started=0.0)
    assert got["totals"] == {
        "workers": 2,
        "healthy": 2,
        "in_flight": 0,  # the prefill's 2 have no decode side in this pool
        "in_flight_by_role": {"prefill": 2, "decode": 0, "regular": 0},
        "kv_transfer_gb_s": 0.0,
    }
    (prefill,) = got["roles"]["prefill"]
    assert prefill["url"] == "http://p:1" and prefill["bootstrap_port"] == 8998
    assert prefill["pd"] == {
        "mode": "prefill",
        "bootstrap_queue": 1,
        "bytes_transferred": 0,
        "transfer_failed": 0,
    }, "only the keys the page shows are passed on"
    assert [w["url"] for w in got["roles"]["decode"]] == ["http://d:2"]
    assert got["roles"]["regular"] == []


def test_a_pd_request_counts_once_in_the_total_in_flight():
    """Each PD request is on a prefill and a decode at once: the page's total must say
    3 requests, not 6."""
    pool = WorkerPool()
    prefill, decode = pool.add("http://p:1", "prefill", 8998), pool.add("http://d:2", "decode")
    prefill.in_flight = decode.in_flight = 3
    args = SimpleNamespace(pd_disaggregation=True, health_check_interval_secs=5.0)
    totals = state(pool, args, started=0.0)["totals"]
    assert totals["in_flight"] == 3, f"PD requests counted per worker, not once: {totals}"
    assert totals["in_flight_by_role"] == {"prefill": 3, "decode": 3, "regular": 0}, totals


def test_regular_router_total_in_flight_is_its_workers_sum():
    pool = WorkerPool()
    for i, n in enumerate((2, 5)):
        pool.add(f"http://w:{i + 1}", "regular").in_flight = n
    args = SimpleNamespace(pd_disaggregation=False, health_check_interval_secs=5.0)
    assert state(pool, args, started=0.0)["totals"]["in_flight"] == 7


def test_page_explains_its_numbers():
    """Terms a new user asked about: what load, the circuit state, in flight and the KV
    rate mean, and the rate's unit even at zero."""
    from pdcore.router.dashboard_page import PAGE

    for term in ("<dt>load</dt>", "<dt>health (circuit)</dt>", "<dt>requests in flight</dt>",
                 "<dt>KV sent/s</dt>", "counts once"):  # fmt: skip
        assert term in PAGE, f"the page's legend lacks {term!r}"
    assert 'if (!gbs) return "0 B/s";' in PAGE, "a zero KV rate must show its unit"


def gauges(text: str) -> dict[tuple, float]:
    return {
        (s.name, s.labels.get("worker")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("pdcore_router_worker_")
    }


def test_worker_gauges_follow_the_pool():
    pool = pool_with_pd_workers()
    metrics = RouterMetrics()
    got = gauges(metrics.render(pool.all()).decode())
    assert got[("pdcore_router_worker_in_flight", "http://p:1")] == 2
    assert got[("pdcore_router_worker_load", "http://p:1")] == 2
    assert got[("pdcore_router_worker_healthy", "http://d:2")] == 1
    assert ("pdcore_router_worker_kv_transfer_gb_s", "http://p:1") in got
    pool.remove("http://d:2")
    got = gauges(metrics.render(pool.all()).decode())
    assert not [k for k in got if k[1] == "http://d:2"], "a removed worker must leave no series"
