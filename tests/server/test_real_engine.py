"""The front end against the real engine process (tiny random model from the engine
tests, byte tokenizer sized to its 128-id vocabulary), through ``serve``: the ZMQ
contract, greedy determinism across APIs, stop strings, aborts, flush and stats."""

from __future__ import annotations

import signal

import httpx
import pytest
from server.harness import TINY_SERVER_SCRIPT, free_port, run_script, sse_events, wait_healthy

SCRIPT = TINY_SERVER_SCRIPT
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def url():
    port = free_port()
    proc = run_script(SCRIPT.format(port=port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=120)
        yield url
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def generate(url, **body):
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_output_is_the_same_streamed_or_not(url):
    body = {"input_ids": list(range(65, 75)), "sampling_params": GREEDY}
    plain = generate(url, **body)
    assert plain["meta_info"]["completion_tokens"] == 12
    assert plain["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    r = httpx.post(f"{url}/generate", json={**body, "stream": True}, timeout=60)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events[-2]["output_ids"] == plain["output_ids"]
    assert events[-2]["text"] == plain["text"]
    again = generate(url, **body)
    assert again["output_ids"] == plain["output_ids"]
    assert again["meta_info"]["cached_tokens"] > 0  # the radix cache kept the prompt


def test_stop_string_cuts_and_frees_the_engine_request(url):
    body = {"input_ids": [70, 71, 72], "sampling_params": GREEDY}
    text = generate(url, **body)["text"]
    stop = text[4:6]
    cut = generate(url, **{**body, "sampling_params": {**GREEDY, "stop": [stop]}})
    assert cut["text"] == text[: text.find(stop)]
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    info = httpx.get(f"{url}/get_server_info").json()
    assert info["engine"]["num_running_reqs"] == 0


def test_openai_apis_logprobs_and_n(url):
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "ignore_eos": True,
        },
        timeout=60,
    ).json()
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    for choice in chat["choices"]:
        content = choice["logprobs"]["content"]
        assert len(content) == 5 and all(len(e["top_logprobs"]) == 2 for e in content)
        assert all(e["logprob"] <= 0 for e in content)
    assert chat["usage"]["completion_tokens"] == 10


def test_stream_disconnect_frees_the_engine_and_flush_works(url):
    body = {"input_ids": [80, 81], "stream": True, "sampling_params": {"max_new_tokens": 400}}
    before = generated_tokens(url)
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/generate", json=body) as r:
            next(line for line in r.iter_lines() if line)
    for _ in range(200):  # the abort reaches the engine within a step or two
        info = httpx.get(f"{url}/get_server_info").json()
        if info["engine"]["num_running_reqs"] == 0:
            break
    assert info["engine"]["num_running_reqs"] == 0
    assert generated_tokens(url) - before < 400  # stopped early: aborted, not finished
    assert info["kv_cache"]["used_pages"] == 0 and info["kv_cache"]["total_pages"] > 0
    r = httpx.post(f"{url}/flush_cache")
    assert r.status_code == 200, r.text
    assert httpx.get(f"{url}/get_server_info").json()["kv_cache"]["cached_pages"] == 0


def generated_tokens(url) -> float:
    prefix = 'sglang:generation_tokens_total{model_name="/models/tiny"} '  # served name
    metrics = httpx.get(f"{url}/metrics").text.splitlines()
    return float(next(line for line in metrics if line.startswith(prefix))[len(prefix) :])
