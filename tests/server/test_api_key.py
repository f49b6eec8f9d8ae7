"""``--api-key`` on a real uvicorn: OpenAI-style bearer auth, open health and metrics.

Spec: with a key every route but ``/health``, ``/health_generate`` and
``/metrics`` (``pdcore.api_key.OPEN_PATHS``, the one list of open routes) answers
401 with an OpenAI error body unless the request carries
``Authorization: Bearer KEY``; the key shows up in no log line, no reply and
no repr (``/get_server_info`` says ``***``). Every route of the app is tried, so
a route added later cannot slip through unguarded.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from route_table import route_calls
from server.harness import LiveServer, Stack

from pdcore.api_key import OPEN_PATHS
from pdcore.config import ServerArgs, masked
from pdcore.launch_server import run

KEY = "sk-test-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 3}}
CHAT = {"model": "Fake-Model-1B", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture
def live(caplog):
    caplog.set_level(logging.DEBUG)
    with LiveServer(step_s=0.002, api_key=KEY) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    assert KEY not in caplog.text, "the API key was logged"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/generate", GENERATE),
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
        ("GET", "/get_server_info", None),
    ],
)
def test_missing_or_wrong_key_is_401_with_an_openai_error(live, method, path, body):
    for headers, why in (({}, "missing"), ({"Authorization": "Bearer nope"}, "invalid")):
        r = live.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, f"{method} {path} without the right key: {r.status_code}"
        error = r.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == 401, error
        assert why in error["message"], error["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text


async def unauthenticated(app, calls) -> dict[tuple[str, str], httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return {(m, p): await client.request(m, p, json={}) for m, p in calls}


def test_the_open_routes_are_exactly_the_documented_ones():
    assert OPEN_PATHS == {"/health", "/health_generate", "/metrics"}, (
        "opening a route to clients without the key is a security decision: document it "
        "(--api-key's help, README) and update this test"
    )


def test_every_route_but_the_open_ones_is_401_without_the_key():
    stack = Stack(api_key=KEY)  # the engine is never started: nothing may reach it
    try:
        calls = route_calls(stack.app)
        paths = {p for _, p in calls}
        assert OPEN_PATHS <= paths, f"an open path that is not a route: {OPEN_PATHS - paths}"
        for path in ("/flush_cache", "/abort_request", "/start_profile", "/openapi.json"):
            assert path in paths, f"{path} is not among the enumerated routes: {paths}"
        guarded = [(m, p) for m, p in calls if p not in OPEN_PATHS]
        answers = asyncio.run(unauthenticated(stack.app, guarded))
    finally:
        stack.close()
    let_through = {c: r.status_code for c, r in answers.items() if r.status_code != 401}
    assert not let_through, f"routes answered without the API key: {let_through}"
    for (method, path), r in answers.items():
        if method == "HEAD":
            continue  # no body
        assert r.json()["error"]["type"] == "authentication_error", f"{method} {path}: {r.text}"


def test_right_key_is_served(live):
    r = live.post("/generate", json=GENERATE, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] >= 1
    r = live.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200, r.text
    assert live.get("/v1/models", headers=AUTH).status_code == 200


def test_health_and_metrics_need_no_key(live):
    for path in ("/health", "/metrics"):
        assert live.get(path).status_code == 200, f"{path} should be open"


def test_server_info_masks_the_key(live):
    info = live.get("/get_server_info", headers=AUTH).json()
    assert info["api_key"] == "***"
    assert KEY not in str(info)


def test_secrets_are_in_no_repr_and_masked_in_dicts():
    args = ServerArgs(api_key=KEY, disaggregation_secret="pd-secret")
    assert KEY not in repr(args) and "pd-secret" not in repr(args)
    shown = masked({"api_key": KEY, "disaggregation_secret": "pd-secret", "port": 1})
    assert shown == {"api_key": "***", "disaggregation_secret": "***", "port": 1}


def test_check_config_masks_both_secrets(capsys, monkeypatch):
    monkeypatch.setenv("PDCORE_DISAGGREGATION_SECRET", "pd-secret-from-env")
    argv = ["--check-config", "--api-key", KEY, "--disaggregation-mode", "prefill"]
    assert run(argv) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["api_key"] == "***" and shown["disaggregation_secret"] == "***", shown
    assert KEY not in out and "pd-secret-from-env" not in out
