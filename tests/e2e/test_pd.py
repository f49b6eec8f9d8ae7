"""PD disaggregation through real servers: prefill + decode equal null mode token for token.

Each request's body goes to prefill and decode at once, as the router sends it,
over Mooncake (TCP) and NIXL (UCX) on 127.0.0.1. The prompts include ones
longer than the chunked-prefill size and ones sharing a prefix (prefix cache on
prefill). Afterwards neither server holds a page for a request.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from e2e.pd_helpers import (
    COMMON,
    assert_same_greedy,
    gen_body,
    pd_generate,
    pd_servers,
    room,
    sse_events,
    start_decode,
    wait_idle,
)
from e2e.server_process import ServerProcess


@pytest.fixture(scope="module")
def references(prompts) -> dict:
    """Null-mode outputs per model path, computed once per module."""
    return {}


def null_mode_outputs(references: dict, model: str, prompts, server=None) -> list[dict]:
    """``server``: a null-mode server already starting (used, then stopped, only if the
    model's outputs are not known yet)."""
    if model not in references:
        server = server or ServerProcess("--model-path", model, *COMMON, wait=False)
        try:
            server.wait_healthy()
            references[model] = asyncio.run(_post_all(server.url, [gen_body(p) for p in prompts]))
        finally:
            server.stop()
    return references[model]


@pytest.fixture(params=["qwen3", "smollm2"])
def model(request) -> str:
    """A random Qwen3 checkpoint and the real embedded SmolLM2."""
    return request.getfixturevalue(f"{request.param}_path")


async def _post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(body):
            r = await client.post(f"{url}/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_pd_matches_null_mode(backend, model, prompts, references):
    """16 concurrent requests through prefill + decode equal null mode's greedy output."""
    null = None
    if model not in references:  # its start-up overlaps the PD pair's
        null = ServerProcess("--model-path", model, *COMMON, wait=False)
    try:
        prefill, decode, port = pd_servers(model, backend)
    except BaseException:
        if null is not None:
            null.stop()
        raise
    try:
        reference = null_mode_outputs(references, model, prompts, null)
    except BaseException:
        decode.stop()
        prefill.stop()
        raise
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in prompts]
        assert len(bodies) == 16
        results = asyncio.run(pd_generate(prefill, decode, bodies))
        for i, ((p_status, d_status, out), ref) in enumerate(zip(results, reference, strict=True)):
            assert (p_status, d_status) == (200, 200), out
            assert_same_greedy(out, ref, f"prompt {i} (len {len(prompts[i])})")
            first = out["meta_info"]["output_token_logprobs"][0]
            want = ref["meta_info"]["output_token_logprobs"][0]
            assert first[1] == want[1] and abs(first[0] - want[0]) < 1e-4
            top = out["meta_info"]["output_top_logprobs"][0]
            assert [t[1] for t in top] == [t[1] for t in ref["meta_info"]["output_top_logprobs"][0]]

        # Streaming from decode, same prompt again (prefill's prefix cache hit).
        body = gen_body(prompts[2], bootstrap_room=room(), stream=True, **pd)
        with httpx.Client(timeout=120) as client, ThreadPoolExecutor(1) as pool:
            p_future = pool.submit(prefill.post, "/generate", body)
            with client.stream("POST", f"{decode.url}/generate", json=body) as stream:
                events = sse_events(stream.iter_lines())
        p = p_future.result()
        assert p.status_code == 200
        assert sse_events(p.text.splitlines())[-1]["meta_info"]["cached_tokens"] > 0
        assert len(events) > 1
        assert_same_greedy(events[-1], reference[2], "streamed prompt 2")

        info = decode.get("/get_server_info").json()
        assert info["disaggregation"]["mode"] == "decode"
        assert info["disaggregation"]["rooms_succeeded"] == len(prompts) + 1
        if backend == "nixl":  # chunk notices ride on NIXL's WRITEs, one per chunk at least
            assert info["disaggregation"]["chunk_notices"] == "in-band"
            assert info["disaggregation"]["notices_in_band"] >= len(prompts) + 1
        else:
            assert info["disaggregation"]["chunk_notices"] == "control"
        assert prefill.get("/get_server_info").json()["disaggregation"]["mode"] == "prefill"
        for server in (prefill, decode):
            assert wait_idle(server)["used_pages"] == 0
            stats = server.get("/get_server_info").json()["disaggregation"]
            assert stats["active_rooms"] == 0 and stats["rooms_failed"] == 0
    finally:
        decode.stop()
        prefill.stop()


def test_pd_request_without_bootstrap_fields_is_400(qwen3_path):
    decode = start_decode(qwen3_path, "mooncake")  # refused before any prefill is asked
    try:
        r = decode.post("/generate", json={"input_ids": [1, 2, 3], "bootstrap_room": 7})
        assert r.status_code == 400 and "bootstrap_host" in r.text
    finally:
        decode.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("decode_args", "field"),
    [(("--page-size", "8"), "page_size"), (("--dtype", "bfloat16"), "kv_dtype")],
    ids=["page-size", "dtype"],
)
def test_mismatched_layout_fails_the_handshake(qwen3_path, prompts, decode_args, field):
    prefill, decode, port = pd_servers(
        qwen3_path,
        "mooncake",
        decode_args=decode_args,
        env={"PDCORE_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "3"},
    )
    try:
        body = gen_body(prompts[0], bootstrap_room=room(), bootstrap_host="127.0.0.1")
        body["bootstrap_port"] = port
        ((p_status, d_status, out),) = asyncio.run(pd_generate(prefill, decode, [body]))
        text = json.dumps(out)
        assert d_status >= 400 and "incompatible" in text and field in text, out
        assert p_status >= 400  # prefill's room times out waiting for decode (3 s here)
        for server in (prefill, decode):
            assert wait_idle(server)["used_pages"] == 0
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.slow
def test_kill_prefill_fails_pending_decode_requests(qwen3_path, prompts):
    """Decode's requests whose prefill died fail within the heartbeat window; decode lives on."""
    import psutil

    env = {
        "PDCORE_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
        "PDCORE_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
    }
    prefill, decode, port = pd_servers(qwen3_path, "mooncake", env=env)
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in prompts[:4]]

        async def run():
            async with httpx.AsyncClient(timeout=60) as client:
                pending = [
                    asyncio.create_task(client.post(f"{decode.url}/generate", json=b))
                    for b in bodies
                ]
                await asyncio.sleep(2.0)  # handshaken, pages handed to prefill, waiting
                assert not any(t.done() for t in pending)
                for proc in [
                    psutil.Process(prefill.proc.pid),
                    *psutil.Process(prefill.proc.pid).children(),
                ]:
                    proc.kill()
                start = time.monotonic()
                responses = await asyncio.gather(*pending)
                return responses, time.monotonic() - start

        responses, elapsed = asyncio.run(run())
        assert elapsed < 10, f"pending requests took {elapsed:.1f}s to fail"
        for r in responses:
            assert r.status_code >= 500, r.text
            assert "prefill" in r.text.lower(), r.text
        assert decode.get("/health").status_code == 200
        assert wait_idle(decode)["used_pages"] == 0
        assert decode.get("/get_server_info").json()["disaggregation"]["active_rooms"] == 0
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.slow
def test_decode_client_abort_frees_pages_and_fails_prefill_room(qwen3_path, prompts):
    """Abort on decode while the KV is awaited: decode frees its pages, and the room,
    when prefill sees it later, fails at once instead of waiting for a decode that left."""
    prefill, decode, port = pd_servers(qwen3_path, "nixl")
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        body = gen_body(prompts[3], bootstrap_room=room(), rid="pd-abort-1", **pd)

        async def run():
            async with httpx.AsyncClient(timeout=60) as client:
                pending = asyncio.create_task(client.post(f"{decode.url}/generate", json=body))
                await asyncio.sleep(2.0)  # decode handed its pages to prefill and waits
                r = await client.post(f"{decode.url}/abort_request", json={"rid": "pd-abort-1"})
                assert r.json() == {"aborted": 1}
                return await pending

        out = asyncio.run(run()).json()
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert wait_idle(decode)["used_pages"] == 0
        late = prefill.post("/generate", json=body)
        assert late.status_code >= 500 and "abort" in late.text, late.text
        for server in (prefill, decode):
            assert wait_idle(server)["used_pages"] == 0
            assert server.get("/get_server_info").json()["disaggregation"]["active_rooms"] == 0
    finally:
        decode.stop()
        prefill.stop()
