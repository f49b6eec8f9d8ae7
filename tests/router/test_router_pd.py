"""The router in front of a real 1P1D pair (Mooncake TCP) answers like one null-mode server.

One prefill, one decode and one null-mode reference server are started per module;
the router runs as its own process (``python -m pdcore.launch_router``).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch
from e2e.pd_helpers import COMMON, assert_idle, pd_servers, sse_events, wait_idle
from e2e.server_process import ServerProcess
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    null = ServerProcess("--model-path", qwen3_path, *COMMON, wait=False)  # starts meanwhile
    router = None
    try:
        prefill, decode, port = pd_servers(qwen3_path, "mooncake")
    except BaseException:
        null.stop()
        raise
    try:
        null.wait_healthy()
        # No bootstrap port given: the router reads it from prefill's /get_server_info.
        router = RouterProcess(
            "--pd-disaggregation",
            "--prefill",
            prefill.url,
            "--decode",
            decode.url,
            "--health-check-interval-secs",
            "0.5",
        )
        yield prefill, decode, port, null, router
    finally:
        for proc in (router, null, decode, prefill):
            if proc is not None:
                proc.stop()


def test_ready_line_names_the_address(cluster):
    router = cluster[4]
    assert router.ready_line.endswith(f"router ready on {router.url}"), router.ready_line


def test_generate_equals_null_mode_greedy(cluster):
    prefill, decode, _, null, router = cluster
    for text in PROMPTS:
        body = {"text": text, "sampling_params": GREEDY}
        got, want = router.post("/generate", body), null.post("/generate", body)
        assert got.status_code == 200, got.text
        assert got.json()["output_ids"] == want.json()["output_ids"], f"differs for {text!r}"
        assert got.json()["text"] == want.json()["text"]
    assert_idle(prefill, decode)


def test_batched_generate_gets_one_room_per_prompt(cluster):
    prefill, decode, _, null, router = cluster
    body = {"text": PROMPTS, "sampling_params": GREEDY}
    got, want = router.post("/generate", body), null.post("/generate", body)
    assert got.status_code == 200, got.text
    assert [o["output_ids"] for o in got.json()] == [o["output_ids"] for o in want.json()]
    assert_idle(prefill, decode)


def test_stream_passes_decode_events_through(cluster):
    prefill, decode, _, null, router = cluster
    body = {"text": PROMPTS[0], "sampling_params": GREEDY, "stream": True}
    with httpx.stream("POST", router.url + "/generate", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = list(r.iter_lines())
    events = sse_events(lines)
    # At least the first token and the end arrive as separate events (a busy front end
    # may merge the tokens between them into one event).
    assert len(events) >= 2, f"expected several SSE events, got {len(events)}"
    assert lines[-1] in ("data: [DONE]", ""), lines[-3:]
    want = null.post("/generate", {"text": PROMPTS[0], "sampling_params": GREEDY}).json()
    assert events[-1]["output_ids"] == want["output_ids"]
    assert_idle(prefill, decode)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_equal_null_mode(cluster, stream):
    prefill, decode, _, null, router = cluster
    body = {
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
    }
    want = null.post("/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    if stream:
        with httpx.stream(
            "POST", router.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as r:
            assert r.status_code == 200
            events = sse_events(list(r.iter_lines()))
        got = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    else:
        r = router.post("/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]["message"]["content"]
    assert got == want
    assert_idle(prefill, decode)


def test_models_and_model_info_come_from_a_worker(cluster):
    router = cluster[4]
    assert router.get("/v1/models").json()["data"][0]["object"] == "model"
    assert router.get("/get_model_info").json()["is_generation"] is True
    assert router.get("/health").status_code == 200
    assert router.get("/health_generate").status_code == 200


def test_server_info_and_metrics_are_the_routers_own(cluster):
    prefill, decode, port, _, router = cluster
    info = router.get("/get_server_info").json()
    assert info["router"]["pd_disaggregation"] is True
    workers = {w["url"]: w for w in info["workers"]}
    assert workers[prefill.url]["bootstrap_port"] == port, "bootstrap port was not discovered"
    metrics = router.get("/metrics").text
    assert f'pdcore_router_requests_total{{role="decode",worker="{decode.url}"}}' in metrics
    assert "pdcore_router_request_latency_seconds_bucket" in metrics


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object")],
)
def test_bad_json_is_400(cluster, content, message):
    r = httpx.post(cluster[4].url + "/generate", content=content, timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_n_above_one_is_refused_by_the_router(cluster):
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 2}
    r = cluster[4].post("/v1/chat/completions", body)
    assert r.status_code == 400 and "n > 1" in r.json()["error"]["message"], r.text


def test_add_list_remove_worker(cluster):
    router = cluster[4]
    ghost = "http://127.0.0.1:9"  # nothing listens on the discard port
    r = router.post(f"/add_worker?url={ghost}&role=prefill&bootstrap_port=8998")
    assert r.status_code == 200, r.text
    assert router.workers()[ghost]["role"] == "prefill"
    assert router.post(f"/add_worker?url={ghost}&role=prefill").status_code == 409
    assert router.post(f"/add_worker?url={ghost}2&role=mixed").status_code == 400
    assert router.post(f"/remove_worker?url={ghost}").status_code == 200
    assert ghost not in router.workers()
    assert router.post(f"/remove_worker?url={ghost}").status_code == 404


def test_client_disconnect_mid_stream_aborts_both_sides(cluster):
    prefill, decode, _, _, router = cluster
    body = {
        "text": PROMPTS[2],
        "sampling_params": {"max_new_tokens": 3000, "temperature": 0, "ignore_eos": True},
        "stream": True,
    }
    with httpx.stream("POST", router.url + "/generate", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break
    before = _generated(decode)
    assert wait_idle(decode, timeout=10)["used_pages"] == 0, "decode kept the aborted request"
    time.sleep(0.5)
    extra = _generated(decode) - before
    assert extra < 2000, f"decode generated {extra} more tokens for a client that left"
    assert_idle(prefill, decode)


def _generated(server) -> float:
    """Output tokens the server generated so far (its Prometheus counter)."""
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("sglang:generation_tokens_total"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no sglang:generation_tokens_total in /metrics")


def test_prefill_500_makes_router_abort_decode_at_once(cluster):
    """A prefill that fails (here a stub answering 500 once decode holds the pages)."""
    _, decode, port, _, _ = cluster
    failed_at: list[float] = []

    def fail_after_decode_allocates(body):
        deadline = time.monotonic() + 10
        while decode.kv_pages()["used_pages"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        failed_at.append(time.monotonic())
        return 500, {"error": {"message": "injected prefill failure"}}

    stub = StubWorker(fail_after_decode_allocates, bootstrap_port=port)
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", stub.url, str(port), "--decode", decode.url,
        "--max-retries", "0",
    )  # fmt: skip
    try:
        body = {"input_ids": list(range(100, 300)), "sampling_params": GREEDY}
        r = router.post("/generate", body)
        assert r.status_code == 502, r.text
        assert "injected prefill failure" in r.json()["error"]["message"], r.text
        assert stub.bodies[0]["rid"], "router sent no rid"
        pages = wait_idle(decode, timeout=1.0)
        assert pages["used_pages"] == 0, (
            f"decode still holds pages 1 s after prefill failed: {pages}"
        )
        assert time.monotonic() - failed_at[0] < 3
        assert json.dumps(stub.bodies[0]["bootstrap_room"]).isdigit()
    finally:
        router.stop()
        stub.stop()


# ---- prompt logprobs: prefill computes them, the router merges them into decode's answer


@pytest.fixture(scope="module")
def hf_logprobs(qwen3_path):
    """``logprobs(ids)``: HF transformers' float32 log-softmax of every position."""
    from model.model_helpers import load_hf

    hf = load_hf(qwen3_path)

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)

    return logprobs


LONG = "Once upon a time there was a little fox who lived by a river and liked to count stones."


def test_generate_input_logprobs_through_pd_equal_null_mode_and_hf(cluster, hf_logprobs):
    prefill, decode, _, null, router = cluster
    body = {"text": LONG, "return_logprob": True, "logprob_start_len": 0,
            "top_logprobs_num": 2, "sampling_params": GREEDY}  # fmt: skip
    got = router.post("/generate", body)
    assert got.status_code == 200, got.text
    meta, want = got.json()["meta_info"], null.post("/generate", body).json()["meta_info"]
    ids = [e[1] for e in want["input_token_logprobs"]]
    assert [e[1] for e in meta["input_token_logprobs"]] == ids, "every prompt token, once"
    assert meta["input_token_logprobs"][0][0] is None
    logp = hf_logprobs(ids)
    for i in range(1, len(ids)):
        lp = meta["input_token_logprobs"][i][0]
        assert abs(lp - want["input_token_logprobs"][i][0]) < 1e-4, f"position {i} vs null mode"
        assert abs(lp - float(logp[i - 1, ids[i]])) < 1e-4, f"position {i} vs HF"
    assert len(meta["input_top_logprobs"]) == len(ids) and meta["input_top_logprobs"][0] is None
    assert len(meta["output_token_logprobs"]) == GREEDY["max_new_tokens"], "decode's outputs"
    default = router.post("/generate", {**body, "logprob_start_len": -1}).json()["meta_info"]
    assert default["input_token_logprobs"] == [[None, ids[-1], None]], "SGLang's default"
    assert_idle(prefill, decode)


def test_decode_answers_empty_input_logprobs_for_sglangs_router_to_merge(cluster):
    """SGLang's router concatenates prefill's and decode's input_token_logprobs."""
    prefill, decode, port, null, _ = cluster
    body = {"text": LONG, "return_logprob": True, "logprob_start_len": 0,
            "sampling_params": GREEDY}  # fmt: skip
    sent = {**body, "bootstrap_host": "127.0.0.1", "bootstrap_port": port,
            "bootstrap_room": 4242 + int(time.time()) % 1000}  # fmt: skip

    async def both():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                client.post(prefill.url + "/generate", json=sent),
                client.post(decode.url + "/generate", json=sent),
            )

    p, d = asyncio.run(both())
    assert p.status_code == d.status_code == 200, (p.text, d.text)
    want = null.post("/generate", body).json()["meta_info"]["input_token_logprobs"]
    assert d.json()["meta_info"]["input_token_logprobs"] == [], "decode never ran the prompt"
    merged = p.json()["meta_info"]["input_token_logprobs"]
    assert [e[1] for e in merged] == [e[1] for e in want], "prefill has all of them"
    assert_idle(prefill, decode)


def test_streamed_generate_through_pd_carries_the_input_logprobs(cluster):
    prefill, decode, _, null, router = cluster
    body = {"text": LONG, "return_logprob": True, "logprob_start_len": 0,
            "sampling_params": GREEDY}  # fmt: skip
    want = null.post("/generate", body).json()["meta_info"]["input_token_logprobs"]
    with httpx.stream("POST", router.url + "/generate", json={**body, "stream": True},
                      timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        events = sse_events(list(r.iter_lines()))
    assert events, "no events"
    for event in events:
        got = event["meta_info"]["input_token_logprobs"]
        assert [e[1] for e in got] == [e[1] for e in want], "each event has the prompt's"
    assert_idle(prefill, decode)


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_completions_echo_logprobs_through_pd_equal_null_mode(cluster, max_tokens):
    prefill, decode, _, null, router = cluster
    body = {"prompt": LONG, "max_tokens": max_tokens, "echo": True, "logprobs": 1,
            "temperature": 0, "prompt_logprobs": 1}  # fmt: skip
    got = router.post("/v1/completions", body)
    assert got.status_code == 200, got.text
    choice = got.json()["choices"][0]
    want = null.post("/v1/completions", body).json()["choices"][0]
    assert choice["text"] == want["text"]
    lp, ref = choice["logprobs"], want["logprobs"]
    assert lp["tokens"] == ref["tokens"] and lp["text_offset"] == ref["text_offset"]
    assert lp["token_logprobs"][0] is None
    diffs = [abs(a - b) for a, b in zip(lp["token_logprobs"][1:], ref["token_logprobs"][1:],
                                         strict=True)]  # fmt: skip
    assert max(diffs) < 1e-4, "echoed prompt logprobs through PD equal null mode's"
    assert [sorted(p) if p else p for p in choice["prompt_logprobs"]] == [
        sorted(p) if p else p for p in want["prompt_logprobs"]
    ], "vLLM's prompt_logprobs come from prefill"
    assert_idle(prefill, decode)
