"""The front end of a DP-attention server: one engine input per DP leader.

Two fake engines stand in for two DP leaders. A request goes to exactly one
leader (round robin, ``data_parallel_rank``, or ``bootstrap_room % 2`` in PD
modes); aborts and cache flushes reach both; stats are the leaders' sums, and
``/get_server_info`` also shows them per rank (``dp_stats.merge_stats``).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from contextlib import asynccontextmanager

import httpx
import pytest
from server.fake_backend import TOTAL_PAGES, ByteTokenizer, FakeEngine
from server.harness import CONTEXT, MODEL_PATH

from pdcore.config import ServerArgs
from pdcore.engine.io_struct import AbortReq, EngineStats, FlushCacheReq
from pdcore.server.dp_stats import merge_stats
from pdcore.server.http_server import create_app
from pdcore.server.tokenizer_manager import TokenizerManager

PD = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 8998}
ALL = {"s0", "s1", "s2"}


@asynccontextmanager
async def two_leaders(**args):
    folder = tempfile.mkdtemp(prefix="pdct-")
    ins, out = [f"ipc://{folder}/in-{d}" for d in range(2)], f"ipc://{folder}/out"
    engines = [FakeEngine(addr, out).start() for addr in ins]
    tm = TokenizerManager(
        ByteTokenizer(), ins, out, context_length=CONTEXT,
        server_args=ServerArgs(model_path=MODEL_PATH, **args),
        engine_alive=lambda: all(e.alive for e in engines), health_poll_s=0.05,
        request_timeout_s=2.0,
    )  # fmt: skip
    app = create_app(tm)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client, engines
    finally:
        for e in engines:
            e.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def until(check, timeout: float = 5.0) -> None:
    """The fake engines run on threads: wait for what they received."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the fake engines did not get it in time"
        await asyncio.sleep(0.01)


def rids(engine) -> list[str]:
    return [r.rid for r in engine.generate_reqs()]


def gen(rid: str, **extra) -> dict:
    return {"text": "Hi", "rid": rid, "sampling_params": {"max_new_tokens": 2}, **extra}


@pytest.mark.anyio
async def test_round_robin_then_pinned_ranks():
    async with two_leaders() as (client, engines):
        for i in range(4):
            assert (await client.post("/generate", json=gen(f"rr{i}"))).status_code == 200
        assert sorted(rids(engines[0]) + rids(engines[1])) == ["rr0", "rr1", "rr2", "rr3"]
        assert len(rids(engines[0])) == len(rids(engines[1])) == 2
        batch = {"text": ["a", "b"], "rid": ["p0", "p1"], "data_parallel_rank": [1, 1]}
        assert (await client.post("/generate", json=batch)).status_code == 200
        chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        r = await client.post("/v1/chat/completions", json={**chat, "data_parallel_rank": 0})
        assert r.status_code == 200, r.text
        assert rids(engines[1])[-2:] == ["p0", "p1"] and rids(engines[0])[-1].startswith("chat")


@pytest.mark.anyio
@pytest.mark.parametrize("rank", [2, -1])
async def test_out_of_range_rank_is_refused_before_anything_is_sent(rank):
    async with two_leaders() as (client, engines):
        r = await client.post("/generate", json=gen("bad", data_parallel_rank=rank))
        assert r.status_code == 400 and "'data_parallel_rank' must be in [0, 2)" in r.text
        r = await client.post("/v1/completions", json={"prompt": "x", "data_parallel_rank": rank})
        assert r.status_code == 400 and "data_parallel_rank" in r.text
        assert rids(engines[0]) == rids(engines[1]) == []


@pytest.mark.anyio
async def test_pd_rooms_pick_the_rank_and_a_conflicting_pin_is_refused():
    async with two_leaders(disaggregation_mode="decode") as (client, engines):
        for room in (7, 10, 13):
            r = await client.post("/generate", json=gen(f"room{room}", bootstrap_room=room, **PD))
            assert r.status_code == 200, r.text
        assert rids(engines[0]) == ["room10"] and rids(engines[1]) == ["room7", "room13"]
        body = gen("clash", bootstrap_room=7, data_parallel_rank=0, **PD)
        r = await client.post("/generate", json=body)
        assert r.status_code == 400 and "conflicts with 'bootstrap_room'" in r.text


@pytest.mark.anyio
async def test_aborts_and_flushes_reach_every_leader_and_stats_add_up():
    async with two_leaders() as (client, engines):
        for e in engines:
            e.paused = True  # requests stay running
        posts = [asyncio.create_task(client.post("/generate", json=gen(f"s{i}"))) for i in range(3)]
        await until(lambda: sum(len(rids(e)) for e in engines) == 3)
        info = (await client.get("/get_server_info")).json()
        assert info["engine"]["num_running_reqs"] == 3
        assert info["kv_cache"]["total_pages"] == 2 * TOTAL_PAGES
        per_rank = [r["num_running_reqs"] for r in info["data_parallel"]]
        assert per_rank == [2, 1], info["data_parallel"]
        assert (await client.post("/abort_request", json={"abort_all": True})).json() == {
            "aborted": 3
        }
        await asyncio.gather(*posts)
        for e in engines:
            e.paused = False
            await until(lambda e=e: {m.rid for m in e.received if isinstance(m, AbortReq)} == ALL)
        r = await client.post("/flush_cache")
        assert r.status_code == 200, r.text
        assert all(any(isinstance(m, FlushCacheReq) for m in e.received) for e in engines)
        metrics = (await client.get("/metrics")).text
        assert "sglang:num_running_reqs" in metrics


def test_merged_stats_sum_counters_and_histograms_and_average_recent_means():
    def part(running, rooms, counts, latency_ms, flushed):
        hist = {"buckets": [0.1, 1.0], "counts": counts, "sum": sum(counts), "count": sum(counts)}
        return EngineStats(
            token=7, num_running=running, num_waiting=1, total_pages=64, free_pages=60,
            used_pages=running, cached_pages=2, page_size=16, flushed=flushed,
            disaggregation={"mode": "prefill", "active_rooms": rooms, "chunk_notices": "control"},
            pd_metrics={"stages": {"transfer": hist}, "recent": {"latency_ms": latency_ms}},
        )  # fmt: skip

    merged = merge_stats([part(1, 2, [1, 0, 2], 10.0, True), part(3, 1, [0, 4, 1], 30.0, False)])
    assert (merged.num_running, merged.num_waiting, merged.total_pages) == (4, 2, 128)
    assert (merged.used_pages, merged.cached_pages, merged.page_size) == (4, 4, 16)
    assert merged.flushed is False, "a flush counts only if every leader flushed"
    disagg = merged.disaggregation
    assert disagg == {"mode": "prefill", "active_rooms": 3, "chunk_notices": "control"}
    hist = merged.pd_metrics["stages"]["transfer"]
    assert hist == {"buckets": [0.1, 1.0], "counts": [1, 4, 3], "sum": 8, "count": 8}
    assert merged.pd_metrics["recent"] == {"latency_ms": 20.0}
