"""Metrics math on synthetic timings: percentiles, TPOT, throughput, goodput, timeline."""

from __future__ import annotations

import pytest

from pdcore.benchserve.client import RequestResult
from pdcore.benchserve.metrics import (
    distribution_ms,
    errors,
    latencies_ms,
    percentile,
    summarize,
    timeline,
    tpot,
)


def ok(ttft: float, latency: float, out: int, prompt: int = 10, start: float = 0.0, itl=()):
    return RequestResult(
        success=True,
        prompt_len=prompt,
        output_len=out,
        requested_output_len=out,
        start=start,
        ttft=ttft,
        latency=latency,
        itl=list(itl),
    )


def failed(message: str = "HTTP 500: boom"):
    return RequestResult(success=False, error=message, prompt_len=10, requested_output_len=5)


def test_percentiles_interpolate_linearly_between_ranks():
    values = list(range(1, 11))  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile([4.0], 99) == 4.0
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3


def test_distribution_is_in_milliseconds():
    d = distribution_ms([0.1, 0.2, 0.3, 0.4])
    assert d["count"] == 4
    assert d["mean"] == pytest.approx(250.0) and d["p50"] == pytest.approx(250.0)
    assert (d["min"], d["max"]) == (pytest.approx(100.0), pytest.approx(400.0))
    assert d["std"] == pytest.approx(111.803, rel=1e-4)


def test_distribution_of_nothing_has_no_values():
    d = distribution_ms([])
    assert d["count"] == 0 and d["p99"] is None and d["mean"] is None


def test_tpot_is_decode_time_over_tokens_after_the_first():
    assert tpot(ok(ttft=0.5, latency=2.5, out=5)) == pytest.approx(0.5)  # (2.5-0.5)/(5-1)
    assert tpot(ok(ttft=0.5, latency=0.5, out=1)) is None


def test_latencies_leave_failed_requests_and_one_token_tpots_out():
    results = [
        ok(0.1, 1.1, out=3, itl=[0.4, 0.6]),
        ok(0.3, 0.3, out=1),
        failed(),
    ]
    lat = latencies_ms(results)
    assert lat["ttft"]["count"] == 2 and lat["ttft"]["mean"] == pytest.approx(200.0)
    assert lat["tpot"]["count"] == 1 and lat["tpot"]["mean"] == pytest.approx(500.0)
    assert lat["itl"]["count"] == 2 and lat["itl"]["max"] == pytest.approx(600.0)
    assert lat["e2e"]["mean"] == pytest.approx(700.0)


def test_throughput_counts_only_completed_requests_over_the_duration():
    results = [ok(0.1, 1.0, out=8, prompt=20), ok(0.2, 2.0, out=4, prompt=30), failed()]
    s = summarize(results, duration=4.0)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (50, 12)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["input_throughput"] == pytest.approx(12.5)
    assert s["output_throughput"] == pytest.approx(3.0)
    assert s["total_token_throughput"] == pytest.approx(15.5)
    assert s["mean_concurrency"] == pytest.approx(0.75)  # 3 s of requests in 4 s
    assert s["goodput"] is None, "no SLO given, no goodput"


def test_goodput_counts_requests_within_both_slos_per_second():
    results = [
        ok(ttft=0.1, latency=0.5, out=5),  # TPOT 100 ms: good
        ok(ttft=0.3, latency=0.7, out=5),  # TTFT 300 ms: too slow
        ok(ttft=0.1, latency=1.3, out=5),  # TPOT 300 ms: too slow
        ok(ttft=0.1, latency=0.1, out=1),  # no TPOT: only TTFT counts, good
        failed(),
    ]
    g = summarize(results, duration=2.0, slo_ttft_ms=200, slo_tpot_ms=150)["goodput"]
    assert g["good_requests"] == 2
    assert g["request_goodput"] == pytest.approx(1.0)
    assert (g["slo_ttft_ms"], g["slo_tpot_ms"]) == (200, 150)


def test_goodput_with_one_slo_ignores_the_other():
    results = [ok(ttft=0.1, latency=5.0, out=2), ok(ttft=0.5, latency=0.6, out=2)]
    g = summarize(results, duration=1.0, slo_ttft_ms=200)["goodput"]
    assert g["good_requests"] == 1 and g["slo_tpot_ms"] is None


def test_timeline_bins_tokens_at_their_arrival_and_requests_at_completion():
    a = ok(0.1, 1.0, out=4, start=100.0)
    a.chunks = [(100.1, 1), (100.5, 3)]
    b = ok(0.1, 3.9, out=2, start=101.0)
    b.chunks = [(101.1, 1), (104.9, 1)]
    lost = failed()
    lost.chunks = [(100.2, 5)]
    t = timeline([a, b, lost], start=100.0, duration=5.0)
    width = t["bin_s"]
    assert width == pytest.approx(5.0 / len(t["t_s"]))
    assert sum(t["output_tokens_per_s"]) * width == pytest.approx(6), "failed tokens excluded"
    assert sum(t["completed_requests_per_s"]) * width == pytest.approx(2)
    assert t["output_tokens_per_s"][int(0.5 / width)] * width == pytest.approx(3)
    assert t["completed_requests_per_s"][-1] * width == pytest.approx(1), "b ends at 4.9 s"


def test_errors_are_grouped_by_message_most_frequent_first():
    results = [failed("HTTP 503: busy"), ok(0.1, 0.2, 2), failed("timeout"), failed("timeout")]
    assert errors(results) == [
        {"error": "timeout", "count": 2},
        {"error": "HTTP 503: busy", "count": 1},
    ]
