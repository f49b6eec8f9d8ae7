"""The router says it is ready only when it can route: ``/health`` and ``/readiness``
answer 503 naming the role without a healthy worker, ``/liveness`` answers while the
process is up, and the startup line says what it waits for."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

from pdcore.launch_router import parse_router_args
from pdcore.router.app import build_app
from pdcore.router.readiness import readiness
from pdcore.router.workers import WorkerPool

pytestmark = pytest.mark.timeout(60)


def _ok(body):
    return 200, {"text": "ok", "meta_info": {}}


def test_pd_readiness_needs_a_confirmed_worker_of_each_role():
    pool = WorkerPool()
    prefill = pool.add("http://p:1", "prefill")
    pool.add("http://d:1", "decode")
    prefill.breaker.success()  # answered its health check; decode never did
    state = readiness(pool, ("prefill", "decode"))
    assert not state.ready, "a decode nobody has reached yet made the router ready"
    assert "no healthy decode worker" in state.message and "prefill" not in state.message, (
        state.message
    )
    assert state.workers == {
        "prefill": {"healthy": 1, "total": 1},
        "decode": {"healthy": 0, "total": 1},
    }


def test_regular_router_health_is_503_without_a_reached_worker():
    args, _ = parse_router_args(["--worker-urls", "http://127.0.0.1:9"], "test")
    app = build_app(args)

    async def get(path):
        transport = httpx.ASGITransport(app=app)  # no lifespan: no health check ran
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            return await client.get(path)

    r = asyncio.run(get("/health"))
    assert r.status_code == 503, "a router with no reachable worker must not report healthy"
    assert "no healthy regular worker" in r.json()["error"]["message"], r.text
    assert asyncio.run(get("/liveness")).status_code == 200, "liveness is the process only"


@pytest.fixture(scope="module")
def router_without_prefill():
    """A PD router whose only prefill answers /health with 503 until a test says so."""
    prefill, decode = StubWorker(_ok), StubWorker(_ok)
    prefill.healthy = False
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", prefill.url, "8998", "--decode", decode.url,
        "--health-check-interval-secs", "0.2",
    )  # fmt: skip
    yield router, prefill
    router.stop()
    prefill.stop()
    decode.stop()


def test_startup_line_says_it_waits_for_a_prefill(router_without_prefill):
    router, _ = router_without_prefill
    line = router.ready_line
    assert "router ready" not in line, f"'ready' printed while no prefill answers: {line}"
    assert f"router listening on {router.url}" in line and "no healthy prefill worker" in line, (
        f"the startup line must say what the router waits for: {line}"
    )


def test_health_and_readiness_are_503_naming_prefill(router_without_prefill):
    router, _ = router_without_prefill
    for path in ("/health", "/readiness"):
        r = router.get(path)
        assert r.status_code == 503, f"{path} answered {r.status_code} with no healthy prefill"
        body = r.json()
        assert "no healthy prefill worker" in body["error"]["message"], body
        assert body["status"] == "not_ready" and body["workers"]["decode"]["healthy"] == 1, body
    assert router.get("/liveness").status_code == 200, "liveness must not depend on workers"


def test_ready_once_the_prefill_answers(router_without_prefill):
    router, prefill = router_without_prefill
    prefill.healthy = True
    for _ in range(100):
        if router.get("/health").status_code == 200:
            break
        asyncio.run(asyncio.sleep(0.05))
    r = router.get("/readiness")
    assert r.status_code == 200, f"still not ready after the prefill recovered: {r.text}"
    assert r.json()["workers"]["prefill"] == {"healthy": 1, "total": 1}, r.text
    for _ in range(40):
        if any(f"router ready on {router.url}" in line for line in router.log):
            break
        asyncio.run(asyncio.sleep(0.05))
    assert any(f"router ready on {router.url}" in line for line in router.log), (
        f"no ready line once routable: {router.log}"
    )
