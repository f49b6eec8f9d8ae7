"""A dead engine fails pending and new requests with 503; engine errors pass through."""

from __future__ import annotations

import anyio
import pytest
from server.harness import sse_events

pytestmark = pytest.mark.anyio


async def wait_for(predicate, timeout: float = 5.0):
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def start_then_kill(stack, body, path="/generate", after=lambda e: bool(e.running)):
    result = {}
    async with anyio.create_task_group() as tg:

        async def call():
            result["r"] = await stack.client.post(path, json=body)

        tg.start_soon(call)
        await wait_for(lambda: after(stack.engine))
        stack.engine.stop()
    return result["r"]


async def test_pending_request_gets_503_and_health_fails(stack):
    stack.engine.paused = True
    r = await start_then_kill(stack, {"text": "Hi"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable"
    assert "engine" in r.json()["error"]["message"]
    assert (await stack.client.get("/health")).status_code == 503
    assert (await stack.client.get("/health_generate")).status_code == 503
    again = await stack.client.post("/v1/completions", json={"prompt": "Hi"})
    assert again.status_code == 503
    info = await stack.client.get("/get_server_info")
    assert info.status_code == 200 and info.json()["engine"]["alive"] is False
    assert (await stack.client.get("/metrics")).status_code == 200
    assert stack.tm.num_pending == 0


async def test_stream_before_first_token_gets_503(stack):
    stack.engine.paused = True
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    r = await start_then_kill(stack, body, "/v1/chat/completions")
    assert r.status_code == 503 and r.json()["error"]["code"] == 503


async def test_stream_that_already_started_ends_with_an_error_event(stack):
    stack.engine.step_s = 0.02
    body = {"text": "Hi", "stream": True, "sampling_params": {"max_new_tokens": 200}}

    def produced_some(engine):
        return any(r["n"] >= 3 for r in engine.running.values())

    r = await start_then_kill(stack, body, after=produced_some)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 503
    assert events[0]["text"]


async def test_engine_error_is_passed_through(stack):
    stack.engine.reject = lambda req: "the request does not fit the KV cache"
    r = await stack.client.post("/generate", json={"text": "Hi"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "the request does not fit the KV cache"
    stream = await stack.client.post("/v1/completions", json={"prompt": "Hi", "stream": True})
    assert stream.status_code == 400
    stack.engine.reject = None
    assert (await stack.client.post("/generate", json={"text": "Hi"})).status_code == 200
