"""``--max-payload-size`` on a real uvicorn: a body over the limit is a 413 in
OpenAI's error shape, decided before the body is read in full.

Spec: a ``Content-Length`` over the limit is refused with no body sent at all; a
chunked body (no ``Content-Length``) is cut off once it passes the limit, while
the client is still sending; a body under the limit, chunked or not, is served.
"""

from __future__ import annotations

import json

import httpx
import pytest
from oversized_body import CHUNK, chunked_without_end, declared_too_large
from server.harness import LiveServer

from pdcore.body_limit import DEFAULT_MAX_PAYLOAD_SIZE
from pdcore.config import ServerArgs
from pdcore.launch_server import run

LIMIT = 4 * CHUNK
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 2}}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server():
    with LiveServer(step_s=0.002, max_payload_size=LIMIT) as live:
        yield live.url


def assert_413(status: int, body: dict, why: str) -> None:
    assert status == 413, f"{why}: expected 413, got {status} {body}"
    error = body["error"]
    assert error["code"] == 413 and error["type"] == "invalid_request_error", error
    assert str(LIMIT) in error["message"] and "--max-payload-size" in error["message"], error


def test_declared_length_over_the_limit_is_refused_before_any_body(server):
    for path in ("/generate", "/v1/chat/completions", "/start_profile"):
        status, body = declared_too_large(server, path, 10 * LIMIT)
        assert_413(status, body, f"{path} with Content-Length {10 * LIMIT} and no body sent")


def test_chunked_body_is_cut_off_once_past_the_limit(server):
    status, body, sent = chunked_without_end(server, "/generate", most=256 * LIMIT)
    assert_413(status, body, "an endless chunked body")
    assert sent < 256 * LIMIT, "the server answered only when the client stopped sending"


def test_chunked_body_under_the_limit_is_served(server):
    raw = json.dumps(GENERATE).encode()
    raw += b" " * (LIMIT - len(raw) - 1)  # JSON may end in whitespace

    def chunks():
        for i in range(0, len(raw), CHUNK):
            yield raw[i : i + CHUNK]

    r = httpx.post(f"{server}/generate", content=chunks(), timeout=30,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert "content-length" not in r.request.headers, "the test meant to send chunks"
    assert r.status_code == 200, f"a body of {len(raw)} bytes (limit {LIMIT}): {r.text}"


def test_the_default_fits_a_long_prompt_as_a_token_list():
    million_tokens = len(json.dumps({"input_ids": [151_000] * 1_000_000}))
    assert ServerArgs().max_payload_size == DEFAULT_MAX_PAYLOAD_SIZE
    assert DEFAULT_MAX_PAYLOAD_SIZE >= 4 * million_tokens, "a 1M-token prompt must fit"


def test_a_limit_below_one_byte_is_a_cli_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        run(["--check-config", "--max-payload-size", "0"])
    assert "--max-payload-size" in capsys.readouterr().err
