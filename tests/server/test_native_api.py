"""Health, model/server info, cache flush, abort, metrics and the API key."""

from __future__ import annotations

import anyio
import pytest
from server.fake_backend import PAGE_SIZE, TOTAL_PAGES
from server.harness import MODEL_PATH, asgi_stack

import pdcore

pytestmark = pytest.mark.anyio


async def wait_for(predicate, timeout: float = 5.0):
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def test_health_and_health_generate(stack):
    assert (await stack.client.get("/health")).status_code == 200
    r = await stack.client.get("/health_generate")
    assert r.status_code == 200
    (req,) = stack.engine.generate_reqs()
    assert req.sampling["max_new_tokens"] == 1


async def test_model_info(stack):
    info = (await stack.client.get("/get_model_info")).json()
    assert info["model_path"] == MODEL_PATH and info["tokenizer_path"] == MODEL_PATH
    assert info["is_generation"] is True


async def test_server_info_has_args_engine_stats_and_version(stack):
    info = (await stack.client.get("/get_server_info")).json()
    assert info["version"] == pdcore.__version__
    assert info["model_path"] == MODEL_PATH and info["port"] == 30000
    assert info["engine"]["alive"] is True
    assert info["kv_cache"] == {
        "page_size": PAGE_SIZE,
        "total_pages": TOTAL_PAGES,
        "free_pages": TOTAL_PAGES,
        "used_pages": 0,
        "cached_pages": 0,
    }


async def test_flush_cache_when_idle_and_refused_while_running(stack):
    r = await stack.client.post("/flush_cache")
    assert r.status_code == 200 and "flushed" in r.text
    stack.engine.paused = True
    async with anyio.create_task_group() as tg:
        result = {}

        async def long_request():
            body = {"text": "Hi", "rid": "busy", "sampling_params": {"max_new_tokens": 50}}
            result["r"] = await stack.client.post("/generate", json=body)

        tg.start_soon(long_request)
        await wait_for(lambda: "busy" in stack.engine.running)
        refused = await stack.client.post("/flush_cache")
        assert refused.status_code == 400 and "running" in refused.text
        info = (await stack.client.get("/get_server_info")).json()
        assert info["engine"]["num_running_reqs"] == 1 and info["kv_cache"]["used_pages"] == 1
        aborted = await stack.client.post("/abort_request", json={"rid": "busy"})
        assert aborted.json() == {"aborted": 1}
    out = result["r"].json()
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    await wait_for(lambda: "busy" in stack.engine.aborted())


async def test_abort_request_covers_n_choices_and_abort_all(stack):
    stack.engine.paused = True
    async with anyio.create_task_group() as tg:
        results = []

        async def request(body):
            results.append((await stack.client.post("/generate", json=body)).json())

        tg.start_soon(request, {"text": "Hi", "rid": "multi", "sampling_params": {"n": 2}})
        tg.start_soon(request, {"text": "Hi", "rid": "other"})
        await wait_for(lambda: len(stack.engine.running) == 3)
        assert (await stack.client.post("/abort_request", json={"rid": "multi"})).json() == {
            "aborted": 2
        }
        assert (await stack.client.post("/abort_request", json={"abort_all": True})).json() == {
            "aborted": 1
        }
    await wait_for(lambda: len(stack.engine.aborted()) == 3)
    assert sorted(stack.engine.aborted()) == ["multi-0", "multi-1", "other"]
    outputs = [o for r in results for o in (r if isinstance(r, list) else [r])]
    assert [o["meta_info"]["finish_reason"]["type"] for o in outputs] == ["abort"] * 3


async def test_metrics_are_prometheus_text(stack):
    await stack.client.post(
        "/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 5}}
    )
    r = await stack.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    label = f'{{model_name="{MODEL_PATH}"}}'  # the served name: the model path
    for line in (
        f"sglang:time_to_first_token_seconds_count{label} 1.0",
        f"sglang:inter_token_latency_seconds_count{label} 4.0",
        f"sglang:e2e_request_latency_seconds_count{label} 1.0",
        f"sglang:prompt_tokens_total{label} 3.0",
        f"sglang:generation_tokens_total{label} 5.0",
        f"sglang:num_requests_total{label} 1.0",
        f"sglang:num_running_reqs{label} 0.0",
        f"sglang:num_queue_reqs{label} 0.0",
        f"sglang:kv_pages_cached{label} 1.0",
        f"sglang:token_usage{label} 0.0",
    ):
        assert line in text, line


async def test_api_key_guards_everything_but_health():
    async with asgi_stack(api_key="sekrit") as s:
        assert (await s.client.get("/health")).status_code == 200
        denied = await s.client.get("/v1/models")
        assert denied.status_code == 401 and denied.json()["error"]["message"]
        wrong = await s.client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await s.client.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        info = (
            await s.client.get("/get_server_info", headers={"Authorization": "Bearer sekrit"})
        ).json()
        assert info["api_key"] == "***"
