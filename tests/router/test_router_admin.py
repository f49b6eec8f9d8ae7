"""Who may change the router's workers (``/add_worker``, ``/remove_worker``,
``/start_profile``, ``/stop_profile``).

Spec: the admin credential is ``--admin-api-key``, else ``--api-key``. With one,
these routes answer 401 without it. Without one, they answer 403 naming
``--admin-api-key`` when the router holds any key (a ``--worker-api-key``) or
listens on a non-loopback address; only a loopback router with no key at all
leaves them open. The worker key goes only to workers from the command line or
added by an admin (who need not repeat it): an anonymous caller can never make
the router call a URL of its choosing with it.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

from pdcore.launch_router import parse_router_args
from pdcore.router.admin import ADMIN_PATHS, is_loopback, refusal
from pdcore.router.app import build_app

pytestmark = pytest.mark.timeout(60)

ADMIN_KEY = "admin-key-31f0"
CLIENT_KEY = "client-key-8a27"
WORKER_KEY = "worker-key-c4d9"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def ok(_body):
    return 200, {"text": "ok", "meta_info": {}}


def in_process(*flags: str, host: str = "127.0.0.1"):
    """``request(method, path, headers)`` against a router app built from ``flags``
    (no lifespan: no health checks, no upstream session)."""
    args, _ = parse_router_args(
        ["--worker-urls", "http://127.0.0.1:9", "--host", host, *flags], "test"
    )
    app = build_app(args)

    def request(method: str, path: str, headers: dict | None = None) -> httpx.Response:
        async def go():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
                return await c.request(method, path, headers=headers, json={})

        return asyncio.run(go())

    return request


@pytest.mark.parametrize(
    ("admin_key", "any_key", "host", "closed"),
    [
        (None, False, "127.0.0.1", False),  # a local experiment
        (None, False, "localhost", False),
        (None, False, "::1", False),
        (None, False, "0.0.0.0", True),
        (None, False, "::", True),
        (None, False, "10.1.2.3", True),
        (None, False, "router.internal", True),  # a name may resolve to anything
        (None, True, "127.0.0.1", True),  # a worker key and no admin credential
        (ADMIN_KEY, True, "0.0.0.0", False),  # guarded by the key instead
    ],
)
def test_when_admin_routes_are_closed_to_everyone(admin_key, any_key, host, closed):
    why = refusal(admin_key, any_key, host)
    assert (why is not None) == closed, f"admin={admin_key} key={any_key} host={host}: {why}"
    if closed:
        assert "--admin-api-key" in why, f"the refusal must name the flag to set: {why}"


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.0.1")


def test_on_a_public_address_without_a_key_admin_routes_are_403_naming_the_flag():
    request = in_process(host="0.0.0.0")
    for path in sorted(ADMIN_PATHS):
        r = request("POST", f"{path}?url=http://127.0.0.1:9")
        assert r.status_code == 403, f"{path} on 0.0.0.0 without a key: {r.status_code}"
        error = r.json()["error"]
        assert "--admin-api-key" in error["message"] and error["code"] == 403, error
    assert request("GET", "/list_workers").status_code == 200, "reading stays open"


def test_api_key_is_the_admin_credential_by_default():
    request = in_process("--api-key", CLIENT_KEY, host="0.0.0.0")
    url = "/remove_worker?url=http://127.0.0.1:9"
    assert request("POST", url).status_code == 401
    assert request("POST", url, bearer("wrong")).status_code == 401
    r = request("POST", url, bearer(CLIENT_KEY))
    assert r.status_code == 200, f"--api-key must open the admin routes: {r.text}"


def test_admin_api_key_is_the_only_key_to_the_admin_routes():
    request = in_process("--api-key", CLIENT_KEY, "--admin-api-key", ADMIN_KEY)
    url = "/remove_worker?url=http://127.0.0.1:9"
    r = request("POST", url, bearer(CLIENT_KEY))
    assert r.status_code == 401, f"a client key must not manage workers: {r.status_code}"
    assert "admin" in r.json()["error"]["message"], r.text
    assert request("POST", url, bearer(ADMIN_KEY)).status_code == 200
    assert request("GET", "/list_workers", bearer(CLIENT_KEY)).status_code == 200
    assert request("GET", "/list_workers").status_code == 401, "--api-key still guards the rest"


def settle() -> None:
    """Give the router several health-check rounds (0.2 s apart) to call a worker."""
    time.sleep(1.0)


def test_anonymous_add_with_only_a_worker_key_is_403_and_never_reaches_the_url():
    worker, attacker = StubWorker(ok), StubWorker(ok)
    router = RouterProcess(
        "--worker-urls", worker.url, "--worker-api-key", WORKER_KEY,
        "--health-check-interval-secs", "0.2",
    )  # fmt: skip
    try:
        r = router.post(f"/add_worker?url={attacker.url}")
        assert r.status_code == 403, f"anonymous /add_worker was not refused: {r.text}"
        assert "--admin-api-key" in r.json()["error"]["message"], r.text
        settle()
        assert attacker.url not in router.workers(), "the worker was added anyway"
    finally:
        router.stop()
        worker.stop()
        attacker.stop()
    assert attacker.auth == [], f"the refused URL was called: {attacker.auth[:3]}"
    assert ("/health", f"Bearer {WORKER_KEY}") in worker.auth, "configured workers get the key"


def test_only_an_admin_can_add_a_worker_and_it_gets_the_worker_key():
    worker, attacker, added = StubWorker(ok), StubWorker(ok), StubWorker(ok)
    router = RouterProcess(
        "--worker-urls", worker.url, "--worker-api-key", WORKER_KEY,
        "--admin-api-key", ADMIN_KEY, "--health-check-interval-secs", "0.2",
    )  # fmt: skip
    try:
        for headers in ({}, bearer("wrong"), bearer(WORKER_KEY)):
            r = router.post(f"/add_worker?url={attacker.url}", headers=headers)
            assert r.status_code == 401, f"/add_worker with {headers}: {r.status_code}"
        r = router.post(f"/add_worker?url={added.url}", headers=bearer(ADMIN_KEY))
        assert r.status_code == 200, f"the admin could not add a worker: {r.text}"
        r = router.post(f"/remove_worker?url={worker.url}")
        assert r.status_code == 401, "an anonymous caller removed a worker"
        settle()
        assert set(router.workers()) == {worker.url, added.url}, router.workers()
    finally:
        router.stop()
        for stub in (worker, attacker, added):
            stub.stop()
    assert attacker.auth == [], f"a URL added without the admin key was called: {attacker.auth}"
    keyed = {a for p, a in added.auth if p == "/health"}
    assert keyed == {f"Bearer {WORKER_KEY}"}, f"the admin-added worker's health checks: {keyed}"


def test_the_admin_key_is_never_passed_on_to_workers():
    worker = StubWorker(ok)
    router = RouterProcess("--worker-urls", worker.url, "--admin-api-key", ADMIN_KEY)
    try:
        r = router.post("/start_profile", {}, headers=bearer(ADMIN_KEY))
        assert r.json()["workers"][0]["url"] == worker.url, r.text  # the stub answers 404
    finally:
        router.stop()
        worker.stop()
    sent = [a for p, a in worker.auth if p == "/start_profile"]
    assert sent == [None], f"the worker saw the admin key: {sent}"
