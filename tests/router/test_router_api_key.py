"""The router's ``--api-key`` (its clients) and ``--worker-api-key`` (its workers).

Spec: a router with ``--api-key`` answers 401 to clients without the key (open:
``/health``, ``/health_generate``, ``/metrics``); it sends the workers' key on
every call to a worker -- requests, aborts, health checks, info polls -- which
is ``--worker-api-key`` or, as in SGLang's router, its own ``--api-key``. No
key appears in the router's log, ``/get_server_info`` or ``--check-config``.
Every route of the app is tried without the key, so a route added later (or one
served outside FastAPI, like the generation fast path) cannot slip through.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from route_table import route_calls
from router.router_process import RouterProcess
from router.stub_worker import StubWorker
from server.harness import LiveServer

from pdcore.api_key import OPEN_PATHS
from pdcore.launch_router import parse_router_args
from pdcore.launch_router import run as launch_router
from pdcore.router.admin import ADMIN_PATHS
from pdcore.router.app import GENERATION_PATHS, PROBE_PATHS, build_app

pytestmark = pytest.mark.timeout(60)

ROUTER_KEY = "router-key-5e1d"
WORKER_KEY = "worker-key-9b2c"
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 3}}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def router_app(*flags: str):
    args, _ = parse_router_args(["--worker-urls", "http://127.0.0.1:9", *flags], "test")
    return build_app(args)


async def unauthenticated(app, calls) -> dict[tuple[str, str], int]:
    """Status of each call without a key (no lifespan: nothing reaches a worker)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        return {(m, p): (await client.request(m, p, json={})).status_code for m, p in calls}


@pytest.mark.parametrize(
    "flags",
    [("--api-key", ROUTER_KEY), ("--api-key", ROUTER_KEY, "--admin-api-key", "admin-3e1")],
    ids=["api-key", "api-key+admin-api-key"],
)
def test_every_route_but_the_open_ones_is_401_without_a_key(flags):
    app = router_app(*flags)
    calls = route_calls(app.fastapi)
    paths = {p for _, p in calls}
    open_paths = OPEN_PATHS | PROBE_PATHS
    missing = (set(GENERATION_PATHS) | ADMIN_PATHS | open_paths) - paths
    assert not missing, f"routes the enumeration did not find: {missing}"
    answers = asyncio.run(unauthenticated(app, [c for c in calls if c[1] not in open_paths]))
    let_through = {c: status for c, status in answers.items() if status != 401}
    assert not let_through, f"routes answered without a key: {let_through}"


def test_admin_routes_are_401_without_a_key_when_only_the_admin_key_is_set():
    app = router_app("--admin-api-key", "admin-3e1")
    calls = [c for c in route_calls(app.fastapi) if c[1] in ADMIN_PATHS]
    assert {p for _, p in calls} == ADMIN_PATHS, calls
    answers = asyncio.run(unauthenticated(app, calls))
    assert set(answers.values()) == {401}, f"admin routes without the admin key: {answers}"


def test_every_post_route_is_a_generation_an_open_or_an_admin_route():
    posts = {p for m, p in route_calls(router_app().fastapi) if m == "POST"}
    unclassified = posts - set(GENERATION_PATHS) - OPEN_PATHS - ADMIN_PATHS
    assert not unclassified, (
        f"{unclassified}: a route that changes the router's state belongs in "
        "pdcore.router.admin.ADMIN_PATHS (or say here why it is not)"
    )


def test_router_and_worker_keys_in_front_of_a_real_server():
    with LiveServer(step_s=0.002, api_key=WORKER_KEY) as worker:
        router = RouterProcess(
            "--worker-urls", worker.url, "--api-key", ROUTER_KEY,
            "--worker-api-key", WORKER_KEY, "--log-level", "debug",
            "--health-check-interval-secs", "0.2",
        )  # fmt: skip
        try:
            for headers in ({}, bearer("wrong"), bearer(WORKER_KEY)):
                r = router.post("/generate", GENERATE, headers=headers)
                assert r.status_code == 401, f"router let {headers} through: {r.status_code}"
                assert r.json()["error"]["type"] == "authentication_error"
            assert router.get("/list_workers").status_code == 401
            assert router.get("/health").status_code == 200, "/health must stay open"
            assert router.get("/metrics").status_code == 200, "/metrics must stay open"
            r = router.post("/generate", GENERATE, headers=bearer(ROUTER_KEY))
            assert r.status_code == 200, f"the worker key was not sent: {r.status_code} {r.text}"
            chat = {"model": "Fake-Model-1B", "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 3}  # fmt: skip
            r = router.post("/v1/chat/completions", chat, headers=bearer(ROUTER_KEY))
            assert r.status_code == 200, r.text
            r = router.get("/v1/models", headers=bearer(ROUTER_KEY))
            assert r.status_code == 200, f"/v1/models via the router: {r.status_code} {r.text}"
            info = router.get("/get_server_info", headers=bearer(ROUTER_KEY))
            assert info.json()["router"]["api_key"] == "***"
            assert ROUTER_KEY not in info.text and WORKER_KEY not in info.text
        finally:
            router.stop()
        log = "".join(router.log)
        assert ROUTER_KEY not in log and WORKER_KEY not in log, "a key was logged"


def test_workers_get_the_router_key_on_every_call():
    def decode_answer(body):
        if body.get("text") == "fail":
            return 400, {"error": {"message": "refused"}}
        return 200, {"text": "ok", "meta_info": {}}

    prefill = StubWorker(lambda body: (200, {"text": "", "meta_info": {}}))
    decode = StubWorker(decode_answer)
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", prefill.url, "8998", "--decode", decode.url,
        "--api-key", ROUTER_KEY, "--health-check-interval-secs", "0.2",
    )  # fmt: skip
    try:
        r = router.post("/generate", {"text": "x"}, headers=bearer(ROUTER_KEY))
        assert r.status_code == 200, r.text
        r = router.post("/generate", {"text": "fail"}, headers=bearer(ROUTER_KEY))
        assert r.status_code == 400, r.text
        wait_for(lambda: prefill.aborts, 5, "the abort of the failed request")
        # the stubs have no such routes (404), but each call reaches them, key and all
        router.get("/health_generate")
        router.get("/get_model_info", headers=bearer(ROUTER_KEY))
        router.post("/start_profile", {}, headers=bearer(ROUTER_KEY))
        wait_for(
            lambda: {"/health", "/get_server_info"} <= {p for p, _ in decode.auth},
            5,
            "health checks",
        )
    finally:
        router.stop()
        prefill.stop()
        decode.stop()
    for stub in (prefill, decode):
        paths = {p for p, _ in stub.auth}
        assert {"/health", "/get_server_info", "/generate"} <= paths, paths
        unauthenticated = [(p, a) for p, a in stub.auth if a != f"Bearer {ROUTER_KEY}"]
        assert not unauthenticated, f"calls without the worker key: {unauthenticated[:5]}"
    assert {"/abort_request", "/health_generate", "/start_profile"} <= {p for p, _ in prefill.auth}
    assert {"/get_model_info", "/health_generate"} <= {p for p, _ in decode.auth}


def test_check_config_masks_the_keys(capsys):
    argv = ["--worker-urls", "http://127.0.0.1:1", "--api-key", ROUTER_KEY,
            "--worker-api-key", WORKER_KEY, "--admin-api-key", "admin-3e1",
            "--check-config"]  # fmt: skip
    assert launch_router(argv) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["api_key"] == "***" and shown["worker_api_key"] == "***", shown
    assert shown["admin_api_key"] == "***" and "admin-3e1" not in out, shown
