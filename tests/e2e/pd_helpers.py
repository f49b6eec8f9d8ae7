"""Helpers for PD end-to-end tests: server pairs, request bodies, idle checks."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time

import httpx
from e2e.server_process import ServerProcess, free_port

MAX_NEW = 12
CHUNK = 64
COMMON = ("--chunked-prefill-size", str(CHUNK), "--max-total-tokens", "4096", "--page-size", "16")


def gen_body(ids, **extra) -> dict:
    return {
        "input_ids": ids,
        "return_logprob": True,
        "top_logprobs_num": 2,
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
        **extra,
    }


def assert_same_greedy(out: dict, ref: dict, what: str) -> None:
    """Token-for-token equality; a divergence is only allowed at a near-tie of
    the reference's top two logprobs (< 1e-4 apart), as in the HF comparison."""
    got, want = out["output_ids"], ref["output_ids"]
    if got == want:
        return
    step = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
    top2 = ref["meta_info"]["output_top_logprobs"][step]
    gap = abs(top2[0][0] - top2[1][0])
    assert gap < 1e-4, f"{what}: diverges at step {step} (top-2 gap {gap:.2e}): {got} != {want}"
    print(f"{what}: near-tie divergence at step {step} (top-2 gap {gap:.2e})")


def room() -> int:
    return random.getrandbits(63) or 1


def start_decode(model: str, backend: str, *args: str, env=None, wait=True) -> ServerProcess:
    pd = ("--disaggregation-mode", "decode", "--disaggregation-transfer-backend", backend)
    return ServerProcess("--model-path", model, *pd, *COMMON, *args, env=env, wait=wait)


def pd_servers(model: str, backend: str, *, prefill_args=(), decode_args=(), env=None):
    """A prefill and a decode server, started together (their start-ups overlap)."""
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
        wait=False,
    )
    decode = None
    try:
        decode = start_decode(model, backend, *decode_args, env=env, wait=False)
        prefill.wait_healthy()
        decode.wait_healthy()
    except BaseException:
        for server in (decode, prefill):
            if server is not None:
                server.stop()
        raise
    return prefill, decode, port


def logs(*servers: ServerProcess) -> str:
    """Every server's stderr tail, for a failure message."""
    return "\n".join(f"--- {s.url} stderr ---\n{s.log_tail(2000)}" for s in servers)


async def pd_generate(prefill, decode, bodies) -> list[tuple[int, int, dict]]:
    """Send each body to both servers concurrently; both statuses and decode's JSON per body."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(b):
            p, d = await asyncio.gather(
                client.post(f"{prefill.url}/generate", json=b),
                client.post(f"{decode.url}/generate", json=b),
            )
            return p.status_code, d.status_code, d.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def assert_pd_equals(prefill, decode, bodies, refs, what: str) -> list[dict]:
    """Send ``bodies`` through the pair at once: every one a 200 on both sides and
    greedy-equal to its reference (null mode); decode's answers."""
    results = asyncio.run(pd_generate(prefill, decode, bodies))
    for i, ((p_status, d_status, out), ref) in enumerate(zip(results, refs, strict=True)):
        assert (p_status, d_status) == (200, 200), f"{what}, prompt {i}: {out}\n" + logs(
            prefill, decode
        )
        assert_same_greedy(out, ref, f"{what}, prompt {i}")
    return [out for _, _, out in results]


def sse_events(lines) -> list[dict]:
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]


def wait_idle(server, timeout: float = 10.0) -> dict:
    """Poll until ``server`` holds no KV page (or ``timeout``); its last kv_cache info."""
    deadline = time.monotonic() + timeout
    while True:
        pages = server.kv_pages()
        if pages["used_pages"] == 0 or time.monotonic() > deadline:
            return pages
        time.sleep(0.2)


def assert_idle(*servers, timeout: float = 10.0) -> None:
    """No used KV page and no active PD room on any of ``servers``."""
    for server in servers:
        pages = wait_idle(server, timeout)
        assert pages["used_pages"] == 0, (server.url, pages)
        stats = server.get("/get_server_info").json()["disaggregation"]
        assert stats["active_rooms"] == 0, (server.url, stats)


def descendants(pid: int) -> list[int]:
    """Every child process of ``pid``, recursively (``pgrep -P``)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(x) for x in out.split()]
    return children + [d for c in children for d in descendants(c)]


def kill9(server: ServerProcess) -> None:
    """SIGKILL the server process and all its children (the engine) at once."""
    for pid in [*descendants(server.proc.pid), server.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)
