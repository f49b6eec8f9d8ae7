"""200 mixed requests against a real server: the KV pool returns to idle, nothing leaks.

The mix: plain and streaming /generate, OpenAI chat with stop strings, n=2
completions, streams the client drops after the first chunk, and requests
aborted through /abort_request. The KV budget is small enough to force queueing
and retraction. Afterwards no page is used by a request, and a flush returns
every page to the free list.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
from e2e.e2e_helpers import tiny_checkpoint
from e2e.server_process import ServerProcess

TOTAL = 200
CONCURRENCY = 16


async def plain(client, rng, i):
    ids = [rng.randrange(100, 40000) for _ in range(rng.randrange(4, 120))]
    r = await client.post(
        "/generate",
        json={
            "input_ids": ids,
            "rid": f"plain-{i}",
            "sampling_params": {
                "max_new_tokens": rng.randrange(1, 24),
                "temperature": 0.7,
                "seed": i,
            },
        },
    )
    assert r.status_code == 200, r.text
    return "ok"


async def stream(client, rng, i, drop: bool):
    body = {
        "text": f"Request {i}: count to ten.",
        "stream": True,
        "sampling_params": {"max_new_tokens": 32, "ignore_eos": True},
    }
    async with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:") and drop:
                return "dropped"  # leaving the block closes the connection mid-stream
    return "ok"


async def chat_with_stop(client, rng, i):
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": f"Say {i} things."}],
            "max_tokens": 20,
            "stop": ["e", "a"],
            "temperature": 0.5,
            "seed": i,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return "ok"


async def n_two(client, rng, i):
    r = await client.post(
        "/v1/completions",
        json={
            "model": "default",
            "prompt": f"Number {i} is",
            "max_tokens": 8,
            "n": 2,
            "temperature": 1.0,
        },
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    return "ok"


async def aborted(client, rng, i):
    rid = f"abort-{i}"
    task = asyncio.create_task(  # noqa: RUF006  (awaited below)
        client.post(
            "/generate",
            json={
                "input_ids": [rng.randrange(100, 40000) for _ in range(64)],
                "rid": rid,
                "sampling_params": {"max_new_tokens": 200, "ignore_eos": True},
            },
        )
    )
    await asyncio.sleep(rng.uniform(0.0, 0.3))
    await client.post("/abort_request", json={"rid": rid})
    r = await task
    assert r.status_code in (200, 400), r.text
    return "aborted"


async def soak(url: str):
    rng = random.Random(0)
    kinds = (
        [plain] * 8
        + [lambda c, r, i: stream(c, r, i, False)] * 3
        + [lambda c, r, i: stream(c, r, i, True)] * 2
        + [chat_with_stop] * 3
        + [n_two] * 2
        + [aborted] * 2
    )
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def run(i):
            async with sem:
                return await rng.choice(kinds)(client, rng, i)

        return await asyncio.gather(*(run(i) for i in range(TOTAL)))


def wait_idle(server: ServerProcess, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = server.get("/get_server_info").json()
        kv = info["kv_cache"]
        if kv["used_pages"] == 0 and info["engine"]["num_running_reqs"] == 0:
            return kv
        assert time.monotonic() < deadline, f"pool not idle after {timeout}s: {info}"
        time.sleep(0.2)


def test_200_mixed_requests_leave_no_page_behind(tmp_path, smollm2_tokenizer):
    tiny_checkpoint(tmp_path, "llama", smollm2_tokenizer, seed=5)
    server = ServerProcess(
        "--model-path",
        str(tmp_path),
        "--max-total-tokens",
        "1024",
        "--page-size",
        "16",
        "--max-running-requests",
        "12",
    )
    try:
        outcomes = asyncio.run(soak(server.url))
        assert len(outcomes) == TOTAL
        assert {"ok", "dropped", "aborted"} <= set(outcomes), set(outcomes)
        kv = wait_idle(server)
        assert kv["free_pages"] + kv["cached_pages"] == kv["total_pages"], kv
        assert server.post("/flush_cache").status_code == 200
        kv = wait_idle(server)
        assert kv["free_pages"] == kv["total_pages"], f"pages leaked: {kv}"
        assert server.get("/health").status_code == 200
    finally:
        assert server.stop() == 0, "server did not shut down cleanly"
