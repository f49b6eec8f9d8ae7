"""The router's ``/dashboard`` over stub workers: the state JSON counts a PD request
once, and the page (in headless Chromium, if installed) shows units and explains its
terms. The real-cluster version is ``test_metrics_dashboard.py``."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from router.cluster import wait_for
from router.router_process import RouterProcess
from router.stub_worker import StubWorker
from router.test_metrics_dashboard import chromium, run_chromium

pytestmark = pytest.mark.timeout(120)
SLOW_S = 1.5


def _slow(body):
    time.sleep(SLOW_S)
    return 200, {"text": "ok", "meta_info": {}}


@pytest.fixture(scope="module")
def pd_router():
    prefill, decode = StubWorker(_slow), StubWorker(_slow)
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", prefill.url, "8998", "--decode", decode.url,
        "--health-check-interval-secs", "0.5",
    )  # fmt: skip
    yield router, prefill, decode
    router.stop()
    prefill.stop()
    decode.stop()


def test_state_counts_each_pd_request_once(pd_router):
    router = pd_router[0]

    def send():
        httpx.post(router.url + "/generate", json={"text": "hello"}, timeout=30)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()

    def totals():
        return router.get("/dashboard/state").json()["totals"]

    wait_for(lambda: totals()["in_flight_by_role"]["decode"] == 3, 10, "3 requests on decode")
    now = totals()
    assert now["in_flight"] == 3, f"3 PD requests shown as {now['in_flight']} in flight: {now}"
    for t in senders:
        t.join(30)


@pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (apt-get install --no-install-recommends chromium)",
)
def test_page_shows_units_and_explains_its_terms(pd_router, tmp_path):
    router = pd_router[0]
    dom = run_chromium(tmp_path, "--dump-dom", f"{router.url}/dashboard").stdout
    assert 'data-renders="0"' not in dom, "the page never rendered a state"
    rate = re.search(r'<b id="k-rate">([^<]*)</b>', dom)
    assert rate and rate[1].endswith("B/s"), f"the KV rate shows no unit: {rate and rate[1]}"
    assert "(circuit closed)" in dom, "the circuit state must say it is the circuit's"
    assert re.search(r'<th class="num" title="[^"]+">load</th>', dom), "no tooltip on load"
    assert re.search(r'id="kpi-inflight"[^>]*title="[^"]*counts once', dom) or re.search(
        r'title="[^"]*counts once[^"]*"[^>]*id="kpi-inflight"', dom
    ), "the in-flight total must say a PD request counts once"
    legend = re.search(r'<section id="legend">(.*?)</section>', dom, re.S)
    assert legend and "<dt>load</dt>" in legend[1] and "half_open" in legend[1], (
        "the page must explain load and the circuit states"
    )
    interval = re.search(r'<span id="interval">([^<]*)</span>', dom)
    assert interval and interval[1] == "0.5", "the KV rate window must be the check interval"
