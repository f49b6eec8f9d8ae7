"""PD disaggregation through real servers: prefill + decode equal null mode token for token.

Each request's body goes to prefill and decode at once, as the router sends it,
over Mooncake (TCP) and NIXL (UCX) on 127.0.0.1. The prompts include ones
longer than the chunked-prefill size and ones sharing a prefix (prefix cache on
prefill). Afterwards neither server holds a page for a request.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from e2e.e2e_helpers import tiny_checkpoint
from e2e.server_process import ServerProcess, free_port
from e2e.test_greedy_vs_hf import make_prompts

MAX_NEW = 12
CHUNK = 64
COMMON = ("--chunked-prefill-size", str(CHUNK), "--max-total-tokens", "4096", "--page-size", "16")


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory, smollm2_tokenizer) -> str:
    folder = tmp_path_factory.mktemp("qwen3")
    tiny_checkpoint(folder, "qwen3", smollm2_tokenizer, seed=5)
    return str(folder)


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer) -> list[list[int]]:
    base = make_prompts(smollm2_tokenizer)
    extra = [p + smollm2_tokenizer.encode(" again", add_special_tokens=False) for p in base[2:6]]
    return base + extra  # 12 prompts: long ones, shared prefixes, short ones


@pytest.fixture(scope="module")
def reference(qwen3_path, prompts) -> list[dict]:
    server = ServerProcess("--model-path", qwen3_path, *COMMON)
    try:
        return asyncio.run(_post_all(server.url, [_body(p) for p in prompts]))
    finally:
        server.stop()


def _body(ids, **extra) -> dict:
    return {
        "input_ids": ids,
        "return_logprob": True,
        "top_logprobs_num": 2,
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
        **extra,
    }


async def _post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(body):
            r = await client.post(f"{url}/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def _room() -> int:
    return random.getrandbits(63) or 1


def _pd_servers(model: str, backend: str, *, prefill_args=(), decode_args=(), env=None):
    port = free_port()
    pd = ("--disaggregation-transfer-backend", backend)
    prefill = ServerProcess(
        "--model-path",
        model,
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-bootstrap-port",
        str(port),
        *pd,
        *COMMON,
        *prefill_args,
        env=env,
    )
    try:
        decode = ServerProcess(
            "--model-path", model, "--disaggregation-mode", "decode", *pd, *COMMON, *decode_args,
            env=env,
        )  # fmt: skip
    except BaseException:
        prefill.stop()
        raise
    return prefill, decode, port


async def _pd_generate(prefill, decode, bodies) -> list[tuple[int, dict]]:
    """Send each body to both servers concurrently; decode's status and JSON per body."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(body):
            p, d = await asyncio.gather(
                client.post(f"{prefill.url}/generate", json=body),
                client.post(f"{decode.url}/generate", json=body),
            )
            return p.status_code, d.status_code, d.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def _sse_events(lines) -> list[dict]:
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]


def _wait_idle(server, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pages = server.kv_pages()
        if pages["used_pages"] == 0 or time.monotonic() > deadline:
            return pages
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_pd_matches_null_mode(backend, qwen3_path, prompts, reference):
    prefill, decode, port = _pd_servers(qwen3_path, backend)
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        bodies = [_body(p, bootstrap_room=_room(), **pd) for p in prompts]
        results = asyncio.run(_pd_generate(prefill, decode, bodies))
        for i, ((p_status, d_status, out), ref) in enumerate(zip(results, reference, strict=True)):
            assert (p_status, d_status) == (200, 200), out
            assert out["output_ids"] == ref["output_ids"], f"prompt {i} (len {len(prompts[i])})"
            first = out["meta_info"]["output_token_logprobs"][0]
            want = ref["meta_info"]["output_token_logprobs"][0]
            assert first[1] == want[1] and abs(first[0] - want[0]) < 1e-4
            top = out["meta_info"]["output_top_logprobs"][0]
            assert [t[1] for t in top] == [t[1] for t in ref["meta_info"]["output_top_logprobs"][0]]

        # Streaming from decode, same prompt again (prefill's prefix cache hit).
        body = _body(prompts[2], bootstrap_room=_room(), stream=True, **pd)
        with httpx.Client(timeout=120) as client, ThreadPoolExecutor(1) as pool:
            p_future = pool.submit(prefill.post, "/generate", body)
            with client.stream("POST", f"{decode.url}/generate", json=body) as stream:
                events = _sse_events(stream.iter_lines())
        p = p_future.result()
        assert p.status_code == 200
        assert _sse_events(p.text.splitlines())[-1]["meta_info"]["cached_tokens"] > 0
        assert len(events) > 1
        assert events[-1]["output_ids"] == reference[2]["output_ids"]

        info = decode.get("/get_server_info").json()
        assert info["disaggregation"]["mode"] == "decode"
        assert info["disaggregation"]["rooms_succeeded"] == len(prompts) + 1
        assert prefill.get("/get_server_info").json()["disaggregation"]["mode"] == "prefill"
        for server in (prefill, decode):
            assert _wait_idle(server)["used_pages"] == 0
            stats = server.get("/get_server_info").json()["disaggregation"]
            assert stats["active_rooms"] == 0 and stats["rooms_failed"] == 0
    finally:
        decode.stop()
        prefill.stop()


def test_pd_request_without_bootstrap_fields_is_400(qwen3_path):
    prefill, decode, _ = _pd_servers(qwen3_path, "mooncake")
    try:
        r = decode.post("/generate", json={"input_ids": [1, 2, 3], "bootstrap_room": 7})
        assert r.status_code == 400 and "bootstrap_host" in r.text
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.slow
def test_mismatched_page_size_fails_the_handshake(qwen3_path, prompts):
    prefill, decode, port = _pd_servers(
        qwen3_path,
        "mooncake",
        decode_args=("--page-size", "8"),
        env={"PDCORE_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "3"},
    )
    try:
        body = _body(prompts[0], bootstrap_room=_room(), bootstrap_host="127.0.0.1")
        body["bootstrap_port"] = port
        ((p_status, d_status, out),) = asyncio.run(_pd_generate(prefill, decode, [body]))
        text = json.dumps(out)
        assert d_status >= 400 and "incompatible" in text and "page_size" in text, out
        assert p_status >= 400  # prefill's room times out waiting for decode (3 s here)
        for server in (prefill, decode):
            assert _wait_idle(server)["used_pages"] == 0
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
    prefill, decode, port = _pd_servers(qwen3_path, "mooncake", env=env)
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        bodies = [_body(p, bootstrap_room=_room(), **pd) for p in prompts[:4]]

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
        assert _wait_idle(decode)["used_pages"] == 0
        assert decode.get("/get_server_info").json()["disaggregation"]["active_rooms"] == 0
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.slow
def test_decode_client_abort_frees_pages_and_fails_prefill_room(qwen3_path, prompts):
    """Abort on decode while the KV is awaited: decode frees its pages, and the room,
    when prefill sees it later, fails at once instead of waiting for a decode that left."""
    prefill, decode, port = _pd_servers(qwen3_path, "nixl")
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        body = _body(prompts[3], bootstrap_room=_room(), rid="pd-abort-1", **pd)

        async def run():
            async with httpx.AsyncClient(timeout=60) as client:
                pending = asyncio.create_task(client.post(f"{decode.url}/generate", json=body))
                await asyncio.sleep(2.0)  # decode handed its pages to prefill and waits
                r = await client.post(f"{decode.url}/abort_request", json={"rid": "pd-abort-1"})
                assert r.json() == {"aborted": 1}
                return await pending

        out = asyncio.run(run()).json()
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert _wait_idle(decode)["used_pages"] == 0
        late = prefill.post("/generate", json=body)
        assert late.status_code >= 500 and "abort" in late.text, late.text
        for server in (prefill, decode):
            assert _wait_idle(server)["used_pages"] == 0
            assert server.get("/get_server_info").json()["disaggregation"]["active_rooms"] == 0
    finally:
        decode.stop()
        prefill.stop()
