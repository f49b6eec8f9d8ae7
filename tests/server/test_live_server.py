"""Through a real uvicorn on 127.0.0.1: SSE arrives incrementally; a client that
disconnects (streaming or not) gets its engine request aborted."""

from __future__ import annotations

import json

import httpx
import pytest
from server.harness import LiveServer, wait_until


@pytest.fixture
def live():
    with LiveServer(step_s=0.01) as server:
        yield server


def test_sse_streams_over_the_network(live):
    body = {
        "model": "Fake-Model-1B",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 10,
        "stream": True,
    }
    lines = []
    with httpx.Client(base_url=live.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 3:  # role chunk + first content chunk: engine still running
                    assert live.stack.engine.running
    data = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data)
    assert data[-1] == "data: [DONE]"
    content = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in data[:-1]
    )
    assert content == "Hello worl"
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert client.get("/health").status_code == 200


def test_stream_disconnect_aborts_the_request(live):
    body = {"text": "Hi", "rid": "gone", "stream": True, "sampling_params": {"max_new_tokens": 250}}
    with httpx.Client(base_url=live.url, timeout=10) as client:
        with client.stream("POST", "/generate", json=body) as r:
            for line in r.iter_lines():
                if line:
                    break  # first event received; leave mid-stream
    assert wait_until(lambda: "gone" in live.stack.engine.aborted())
    assert wait_until(lambda: live.stack.tm.num_pending == 0)


def test_non_streaming_disconnect_aborts_the_request(live):
    live.stack.engine.paused = True
    body = {"text": "Hi", "rid": "impatient", "sampling_params": {"max_new_tokens": 250}}
    with httpx.Client(base_url=live.url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/generate", json=body)
    assert wait_until(lambda: "impatient" in live.stack.engine.aborted())
    assert live.stack.tm.num_pending == 0
    live.stack.engine.paused = False
    with httpx.Client(base_url=live.url, timeout=10) as client:
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.json()["choices"][0]["text"] == "He"
