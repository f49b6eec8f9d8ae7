"""Failover: a dead prefill is routed around and marked unhealthy; a healed one is readmitted."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from e2e.pd_helpers import assert_idle, kill9
from e2e.server_process import ServerProcess, free_port
from router.cluster import decode_args, request_counts, start_parallel, start_prefill
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


REQUEST_TIMEOUT_S = 60


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.1)


async def _load(url: str, n: int, concurrency: int, on_progress=None) -> list[tuple]:
    """``n`` short greedy requests; ``(status or None, text)`` each, None for a hang.

    ``on_progress(finished)`` runs (awaited) in its own task as requests finish.
    """
    finished = 0
    progress = asyncio.Event()

    async def one(client, sem, i):
        nonlocal finished
        async with sem:
            body = {"input_ids": [100 + i % 64, *range(200, 216)], "sampling_params": GREEDY}
            try:
                r = await asyncio.wait_for(
                    client.post(url + "/generate", json=body), REQUEST_TIMEOUT_S
                )
                return r.status_code, r.text
            except (asyncio.TimeoutError, httpx.TimeoutException) as e:
                return None, f"no answer within {REQUEST_TIMEOUT_S}s: {e!r}"
            except httpx.HTTPError as e:
                return 0, f"router connection failed: {type(e).__name__}: {e}"
            finally:
                finished += 1
                progress.set()

    async def watch():
        while True:
            await progress.wait()
            progress.clear()
            if await on_progress(finished):
                return

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        sem = asyncio.Semaphore(concurrency)
        watcher = asyncio.create_task(watch()) if on_progress else None
        results = await asyncio.gather(*(one(client, sem, i) for i in range(n)))
        if watcher is not None:
            await watcher
    return results


def _check_outcomes(results: list[tuple], min_ok: int) -> None:
    hung = [text for status, text in results if status is None]
    assert not hung, f"{len(hung)} requests hung: {hung[:3]}"
    ok = [json.loads(text) for status, text in results if status == 200]
    assert all(len(o["output_ids"]) == GREEDY["max_new_tokens"] for o in ok)
    failed = [(status, text[:300]) for status, text in results if status != 200]
    assert len(ok) >= min_ok, f"{len(failed)}/{len(results)} failed: {failed}"
    for status, text in failed:  # the rest: a clear JSON error, not a dropped connection
        assert status >= 400 and json.loads(text)["error"]["message"], (status, text)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_one_of_two_prefills_during_100_requests_then_restart(qwen3_path):
    """Kill -9 a prefill (and its engine) after 20 of 100 requests finished: >= 99 succeed,
    the rest fail with a JSON error, none hangs; the router marks it unhealthy. A prefill
    restarted at the same HTTP and bootstrap address is readmitted and serves requests
    (decode's session with the dead instance must recover)."""
    procs = []
    try:
        (p1, port1), (p2, port2), decode = start_parallel(
            lambda: start_prefill(qwen3_path),
            lambda: start_prefill(qwen3_path),
            lambda: ServerProcess(*decode_args(qwen3_path)),
        )
        procs += [p1, p2, decode]
        router = RouterProcess(
            "--pd-disaggregation", "--prefill", p1.url, str(port1), "--prefill", p2.url,
            str(port2), "--decode", decode.url, "--prefill-policy", "round_robin",
            "--health-check-interval-secs", "0.5", "--cb-timeout-duration-secs", "1",
            # requests in flight when the prefill dies also fail on the decode side; on a
            # busy machine enough of them to open decode's circuit (a separate problem)
            "--cb-failure-threshold", "10",
        )  # fmt: skip
        procs.append(router)
        killed_at: list[int] = []

        async def kill_after_20(finished: int) -> bool:
            if finished < 20:
                return False
            await asyncio.to_thread(kill9, p1)
            killed_at.append(finished)
            return True

        results = asyncio.run(_load(router.url, 100, 8, kill_after_20))
        assert killed_at, "the prefill was never killed"
        _check_outcomes(results, min_ok=99)
        print(f"during kill: {sum(s == 200 for s, _ in results)}/100 succeeded")
        _wait(lambda: not router.workers()[p1.url]["healthy"], 5, "dead prefill marked unhealthy")
        assert router.workers()[p2.url]["healthy"]
        assert_idle(p2, decode)

        # Restart at the same HTTP port and bootstrap port: readmitted, then used again.
        before = request_counts(router).get(p1.url, 0)
        procs.remove(p1)
        p1, _ = start_prefill(qwen3_path, port=p1.port, bootstrap_port=port1)
        procs.append(p1)
        _wait(lambda: router.workers()[p1.url]["healthy"], 10, "restarted prefill readmitted")
        results = asyncio.run(_load(router.url, 20, 4))
        _check_outcomes(results, min_ok=20)
        used = request_counts(router).get(p1.url, 0) - before
        assert used >= 5, f"the restarted prefill got {used} of 20 requests (round robin)"
        ok = sum(status == 200 for status, _ in results)
        print(f"killed after {killed_at[0]} finished; restarted prefill served {used}/20, {ok} ok")
        assert_idle(p1, p2, decode)
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.timeout(60)
def test_unhealthy_worker_is_taken_out_then_readmitted():
    stub = StubWorker(lambda body: (200, {"text": "ok", "meta_info": {}}))
    other = StubWorker(lambda body: (200, {"text": "other", "meta_info": {}}))
    router = RouterProcess(
        "--worker-urls", stub.url, other.url, "--policy", "round_robin",
        "--health-check-interval-secs", "0.2", "--cb-failure-threshold", "2",
    )  # fmt: skip
    try:
        stub.healthy = False
        _wait(lambda: not router.workers()[stub.url]["healthy"], 5, "unhealthy worker marked")
        texts = {router.post("/generate", {"text": "x"}).json()["text"] for _ in range(4)}
        assert texts == {"other"}, f"an unhealthy worker still got requests: {texts}"
        stub.healthy = True
        _wait(lambda: router.workers()[stub.url]["healthy"], 5, "recovered worker readmitted")
        texts = {router.post("/generate", {"text": "x"}).json()["text"] for _ in range(4)}
        assert texts == {"ok", "other"}, texts
    finally:
        router.stop()
        stub.stop()
        other.stop()


@pytest.mark.timeout(60)
def test_no_healthy_worker_of_a_role_is_503_naming_the_role():
    dead, dead2 = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", dead, "8998", "--decode", dead2,
        "--health-check-interval-secs", "0.2", "--cb-failure-threshold", "1",
    )  # fmt: skip
    try:
        _wait(lambda: not any(w["healthy"] for w in router.workers().values()), 5, "all down")
        r = router.post("/generate", {"text": "x"})
        assert r.status_code == 503 and "no healthy prefill worker" in r.text, r.text
    finally:
        router.stop()


@pytest.mark.timeout(60)
def test_connection_errors_are_retried_then_reported_as_502():
    dead = f"http://127.0.0.1:{free_port()}"
    router = RouterProcess(
        "--worker-urls", dead, "--max-retries", "2", "--cb-failure-threshold", "100",
    )  # fmt: skip
    try:
        r = router.post("/generate", {"text": "x"})
        assert r.status_code == 502, r.text
        assert "after 3 attempts" in r.json()["error"]["message"], r.text
    finally:
        router.stop()
