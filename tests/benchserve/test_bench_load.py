"""The load generator: seeded Poisson arrivals, the concurrency cap, result order,
warm-up sends. No wall-clock timing: arrivals are checked as numbers, concurrency
with a fake ``send`` that counts requests in flight."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics

import pytest

from pdcore.benchserve.client import RequestResult
from pdcore.benchserve.datasets import RequestSpec
from pdcore.benchserve.load import arrival_offsets, run_load, warm_up


def test_poisson_mean_interval_is_one_over_rate():
    offsets = arrival_offsets(20001, rate=8.0, seed=0)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 8.0, rel=0.03)
    # exponential gaps: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / 8.0, rel=0.05)


def test_first_request_goes_at_once_and_arrivals_never_go_back():
    offsets = arrival_offsets(500, rate=3.0, seed=1)
    assert offsets[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(offsets))


def test_arrivals_are_reproducible_from_the_seed():
    assert arrival_offsets(50, 2.0, seed=4) == arrival_offsets(50, 2.0, seed=4)
    assert arrival_offsets(50, 2.0, seed=4) != arrival_offsets(50, 2.0, seed=5)


def test_infinite_rate_sends_everything_at_time_zero():
    assert arrival_offsets(7, math.inf, seed=0) == [0.0] * 7


class FakeSend:
    """Counts requests in flight; each takes a few event-loop turns."""

    def __init__(self):
        self.in_flight = self.peak = 0
        self.sent: list[RequestSpec] = []

    async def __call__(self, spec: RequestSpec) -> RequestResult:
        self.sent.append(spec)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1
        return RequestResult(success=True, output_len=spec.output_len, prompt_len=spec.prompt_len)


SPECS = [RequestSpec([i], 1, i + 1) for i in range(12)]


def test_max_concurrency_caps_requests_in_flight():
    send = FakeSend()
    asyncio.run(run_load(SPECS, send, math.inf, max_concurrency=3, seed=0))
    assert send.peak == 3, f"peak in flight {send.peak}, cap 3"
    assert len(send.sent) == len(SPECS)


def test_without_a_cap_an_infinite_rate_sends_all_at_once():
    send = FakeSend()
    asyncio.run(run_load(SPECS, send, math.inf, max_concurrency=None, seed=0))
    assert send.peak == len(SPECS)


def test_results_come_back_in_dataset_order_and_each_is_reported_once():
    done: list[RequestResult] = []
    run = asyncio.run(run_load(SPECS, FakeSend(), math.inf, 4, seed=0, on_done=done.append))
    assert [r.output_len for r in run.results] == [s.output_len for s in SPECS]
    assert sorted(r.output_len for r in done) == [s.output_len for s in SPECS]
    assert run.duration >= 0


def test_warm_up_sends_every_warm_up_request():
    send = FakeSend()
    results = asyncio.run(warm_up(SPECS[:2], send))
    assert send.sent == SPECS[:2] and len(results) == 2
