"""PD faults through real servers: a decode killed mid-transfer, and both PD timeouts.

Every test ends with no KV page used and no PD room open on the servers that
are still alive, and every request ends with an answer (an error), never a hang.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from e2e.pd_helpers import (
    MAX_NEW,
    assert_idle,
    gen_body,
    kill9,
    pd_generate,
    pd_servers,
    room,
    start_decode,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _long_prompts(n: int, length: int) -> list[list[int]]:
    """Distinct random prompts (no prefix-cache hits), each several chunks long."""
    rng = random.Random(11)
    return [[rng.randrange(100, 40000) for _ in range(length)] for _ in range(n)]


def test_kill9_decode_during_transfers_fails_prefill_rooms_and_frees_pages(qwen3_path, prompts):
    env = {"PDCORE_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "8"}
    prefill, decode, port = pd_servers(qwen3_path, "mooncake", env=env)
    decode2 = None
    pd = dict(bootstrap_host="127.0.0.1", bootstrap_port=port)
    try:
        probe = prompts[3]  # longer than a chunk
        ((p_status, d_status, before),) = asyncio.run(
            pd_generate(prefill, decode, [gen_body(probe, bootstrap_room=room(), **pd)])
        )
        assert (p_status, d_status) == (200, 200), before
        assert len(before["output_ids"]) == MAX_NEW
        sent = prefill.get("/get_server_info").json()["disaggregation"]["bytes_transferred"]

        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in _long_prompts(6, 400)]

        async def run():
            async with httpx.AsyncClient(timeout=90) as client:
                on_prefill = [
                    asyncio.create_task(client.post(f"{prefill.url}/generate", json=b))
                    for b in bodies
                ]
                on_decode = [
                    asyncio.create_task(client.post(f"{decode.url}/generate", json=b))
                    for b in bodies
                ]
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # until prefill's first chunk went out
                    info = (await client.get(f"{prefill.url}/get_server_info")).json()
                    if info["disaggregation"]["bytes_transferred"] > sent:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("prefill sent no chunk within 20 s")
                kill9(decode)
                start = time.monotonic()
                responses = await asyncio.gather(*on_prefill)
                elapsed = time.monotonic() - start
                await asyncio.gather(*on_decode, return_exceptions=True)
                return responses, elapsed

        responses, elapsed = asyncio.run(run())
        assert elapsed < 40, f"prefill's requests took {elapsed:.1f}s to end"
        failed = [r for r in responses if r.status_code != 200]
        assert failed, "every transfer finished before decode died"
        for r in failed:
            assert r.status_code >= 500 and "transfer failed" in r.text, r.text
        assert prefill.get("/health").status_code == 200
        assert_idle(prefill)
        assert prefill.get("/get_server_info").json()["disaggregation"]["rooms_failed"] >= len(
            failed
        )

        # A fresh decode server pairs with the same prefill and gets the same answer.
        decode2 = start_decode(qwen3_path, "mooncake", env=env)
        ((p_status, d_status, after),) = asyncio.run(
            pd_generate(prefill, decode2, [gen_body(probe, bootstrap_room=room(), **pd)])
        )
        assert (p_status, d_status) == (200, 200), after
        assert after["output_ids"] == before["output_ids"]
        assert_idle(prefill, decode2)
        assert decode2.get("/get_server_info").json()["disaggregation"]["rooms_failed"] == 0
    finally:
        for server in (decode2, decode, prefill):
            if server is not None:
                server.stop()


@pytest.fixture(scope="module")
def short_timeouts(qwen3_path):
    """A PD pair whose bootstrap and waiting timeouts are 2 s."""
    env = {
        "PDCORE_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "2",
        "PDCORE_DISAGGREGATION_WAITING_TIMEOUT": "2",
    }
    prefill, decode, port = pd_servers(qwen3_path, "mooncake", env=env)
    try:
        yield prefill, decode, port
    finally:
        decode.stop()
        prefill.stop()


def test_decode_waiting_timeout_when_prefill_never_gets_the_request(short_timeouts, prompts):
    prefill, decode, port = short_timeouts
    b = gen_body(prompts[2], bootstrap_room=room(), bootstrap_host="127.0.0.1")
    b["bootstrap_port"] = port
    start = time.monotonic()
    r = decode.post("/generate", json=b)
    elapsed = time.monotonic() - start
    assert r.status_code >= 500, r.text
    assert "WAITING_TIMEOUT" in r.text and "within 2s" in r.text, r.text
    assert 1.5 < elapsed < 6, f"answered after {elapsed:.1f}s"
    assert_idle(decode, prefill)
    assert decode.get("/get_server_info").json()["disaggregation"]["rooms_failed"] >= 1


def test_prefill_bootstrap_timeout_when_decode_never_gets_the_request(short_timeouts, prompts):
    prefill, decode, port = short_timeouts
    b = gen_body(prompts[2], bootstrap_room=room(), bootstrap_host="127.0.0.1")
    b["bootstrap_port"] = port
    start = time.monotonic()
    r = prefill.post("/generate", json=b)
    elapsed = time.monotonic() - start
    assert r.status_code >= 500, r.text
    assert "BOOTSTRAP_TIMEOUT" in r.text and "within 2s" in r.text, r.text
    assert 1.5 < elapsed < 6, f"answered after {elapsed:.1f}s"
    assert_idle(prefill, decode)
    assert prefill.get("/get_server_info").json()["disaggregation"]["rooms_failed"] >= 1
