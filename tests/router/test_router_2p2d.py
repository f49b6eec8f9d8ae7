"""A router over 2 prefills + 2 decodes (Mooncake TCP) answers like one null-mode server.

One cluster (2P2D plus a null-mode reference) serves every check in this module;
two routers over it use different policies (round_robin and the default
cache_aware). Each sends 8 concurrent requests mixing ``/generate`` and
``/v1/chat/completions``, streaming and not; greedy outputs must equal the
null-mode server's, and every prefill and every decode must get some of them.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from e2e.pd_helpers import COMMON, assert_idle
from e2e.server_process import ServerProcess
from router.cluster import decode_args, request_counts, start_parallel, start_prefill
from router.router_process import RouterProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "Once upon a time",
    "def fibonacci(n):",
    "The quick brown fox",
    "In the beginning",
    "Roses are red,",
    "Water boils at",
]
REQUEST_TIMEOUT_S = 60


def _kinds() -> list[tuple[str, bool]]:
    """8 requests: (path, stream), two of each kind."""
    kinds = [("/generate", False), ("/generate", True)]
    kinds += [("/v1/chat/completions", False), ("/v1/chat/completions", True)]
    return kinds * 2


def _body(path: str, stream: bool, prompt: str) -> dict:
    if path == "/generate":
        params = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
        return {"text": prompt, "sampling_params": params, "stream": stream}
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def _events(lines: list[str]) -> list[dict]:
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]


async def _one(client: httpx.AsyncClient, url: str, path: str, stream: bool, prompt: str):
    """The answer reduced to what greedy parity compares: output ids or text."""
    body = _body(path, stream, prompt)
    if not stream:
        r = await client.post(url + path, json=body)
        assert r.status_code == 200, (url, path, r.text[:300])
        out = r.json()
        return out["output_ids"] if path == "/generate" else out["choices"][0]["message"]["content"]
    async with client.stream("POST", url + path, json=body) as r:
        assert r.status_code == 200, (url, path, (await r.aread())[:300])
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines()]
    events = _events(lines)
    assert events, f"no SSE event from {url}{path}"
    if path == "/generate":
        return events[-1]["output_ids"]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


async def _mixed(url: str) -> list:
    """8 concurrent requests (2 of each kind), each bounded by a timeout."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        calls = [
            asyncio.wait_for(_one(client, url, path, stream, prompt), REQUEST_TIMEOUT_S)
            for (path, stream), prompt in zip(_kinds(), PROMPTS, strict=True)
        ]
        return await asyncio.gather(*calls)


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    procs: list = []
    try:
        started = start_parallel(
            lambda: start_prefill(qwen3_path),
            lambda: start_prefill(qwen3_path),
            lambda: ServerProcess(*decode_args(qwen3_path)),
            lambda: ServerProcess(*decode_args(qwen3_path)),
            lambda: ServerProcess("--model-path", qwen3_path, *COMMON),
        )
        (p1, port1), (p2, port2), d1, d2, null = started
        procs += [p1, p2, d1, d2, null]
        assert port1 != port2
        yield {"prefills": [(p1, port1), (p2, port2)], "decodes": [d1, d2], "null": null}
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture(scope="module")
def reference(cluster) -> list:
    """The null-mode server's answers to the same 8 requests, sent the same way."""
    return asyncio.run(_mixed(cluster["null"].url))


def _router(cluster, *policy: str) -> RouterProcess:
    args = ["--pd-disaggregation"]
    for server, port in cluster["prefills"]:
        args += ["--prefill", server.url, str(port)]
    for server in cluster["decodes"]:
        args += ["--decode", server.url]
    return RouterProcess(*args, *policy, "--health-check-interval-secs", "0.5")


@pytest.mark.parametrize("policy", ["round_robin", "cache_aware"])
def test_2p2d_mixed_requests_equal_null_mode_and_use_every_worker(cluster, reference, policy):
    router = _router(cluster, "--policy", policy)
    try:
        got = asyncio.run(_mixed(router.url))
        for (path, stream), prompt, g, want in zip(_kinds(), PROMPTS, got, reference, strict=True):
            assert g == want, f"{path} stream={stream} {prompt!r}: router {g!r} != null {want!r}"
        counts = request_counts(router)
        workers = [s for s, _ in cluster["prefills"]] + cluster["decodes"]
        unused = [w.url for w in workers if counts.get(w.url, 0) == 0]
        assert not unused, f"{policy}: workers that got no request: {unused}; counts {counts}"
        assert sum(counts.get(s.url, 0) for s, _ in cluster["prefills"]) == len(PROMPTS)
        assert sum(counts.get(d.url, 0) for d in cluster["decodes"]) == len(PROMPTS)
    finally:
        router.stop()
    assert_idle(*(s for s, _ in cluster["prefills"]), *cluster["decodes"])
