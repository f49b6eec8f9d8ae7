"""The router's ``--max-payload-size``: a body over it is a 413 before it is read in
full, on the generation fast path and on the FastAPI routes alike, and it never
reaches a worker. A body under it is routed as before."""

from __future__ import annotations

import json

import httpx
import pytest
from oversized_body import CHUNK, chunked_without_end, declared_too_large
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

from pdcore.launch_router import parse_router_args

pytestmark = pytest.mark.timeout(60)

LIMIT = 4 * CHUNK


@pytest.fixture(scope="module")
def routed():
    worker = StubWorker(lambda body: (200, {"text": "ok", "meta_info": {}}))
    router = RouterProcess("--worker-urls", worker.url, "--max-payload-size", str(LIMIT))
    try:
        yield router, worker
    finally:
        router.stop()
        worker.stop()


def assert_413(status: int, body: dict, why: str) -> None:
    assert status == 413, f"{why}: expected 413, got {status} {body}"
    error = body["error"]
    assert error["code"] == 413 and "--max-payload-size" in error["message"], error


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions", "/add_worker"])
def test_declared_length_over_the_limit_is_413_before_any_body(routed, path):
    router, _ = routed
    status, body = declared_too_large(router.url, path, 10 * LIMIT)
    assert_413(status, body, f"{path} with Content-Length {10 * LIMIT} and no body sent")


@pytest.mark.parametrize("path", ["/generate", "/start_profile"])
def test_chunked_body_is_cut_off_once_past_the_limit(routed, path):
    router, worker = routed
    before = len(worker.bodies)
    status, body, sent = chunked_without_end(router.url, path, most=256 * LIMIT)
    assert_413(status, body, f"an endless chunked body to {path}")
    assert sent < 256 * LIMIT, "the router answered only when the client stopped sending"
    assert len(worker.bodies) == before, "the oversized request reached a worker"


def test_chunked_body_under_the_limit_is_routed(routed):
    router, worker = routed
    raw = json.dumps({"text": "padded", "sampling_params": {"max_new_tokens": 2}}).encode()
    raw += b" " * (LIMIT - len(raw) - 1)
    chunks = (raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK))
    r = httpx.post(f"{router.url}/generate", content=chunks, timeout=30,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200, f"a body of {len(raw)} bytes (limit {LIMIT}): {r.text}"
    assert worker.bodies[-1]["text"] == "padded", "the request did not reach the worker"


def test_a_limit_below_one_byte_is_a_cli_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_router_args(["--worker-urls", "http://127.0.0.1:9", "--max-payload-size", "0"], "r")
    assert "--max-payload-size" in capsys.readouterr().err
