"""Failover: a dead prefill is routed around and marked unhealthy; a healed one is readmitted."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from e2e.pd_helpers import COMMON, assert_idle, kill9
from e2e.server_process import ServerProcess, free_port
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


def _prefill(model: str) -> tuple[ServerProcess, int]:
    port = free_port()
    args = ("--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(port))
    pd = ("--disaggregation-transfer-backend", "mooncake")
    return ServerProcess("--model-path", model, *args, *pd, *COMMON), port


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_one_of_two_prefills_requests_still_succeed(qwen3_path):
    procs = []
    try:
        (p1, port1), (p2, port2) = _prefill(qwen3_path), _prefill(qwen3_path)
        procs += [p1, p2]
        decode = ServerProcess(
            "--model-path", qwen3_path, "--disaggregation-mode", "decode",
            "--disaggregation-transfer-backend", "mooncake", *COMMON,
        )  # fmt: skip
        procs.append(decode)
        router = RouterProcess(
            "--pd-disaggregation", "--prefill", p1.url, str(port1), "--prefill", p2.url,
            str(port2), "--decode", decode.url, "--prefill-policy", "round_robin",
            "--health-check-interval-secs", "0.5",
        )  # fmt: skip
        procs.append(router)

        async def run(n: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                sem = asyncio.Semaphore(4)

                async def one(i):
                    async with sem:
                        body = {"input_ids": [100 + i, *range(200, 240)], "sampling_params": GREEDY}
                        return await client.post(router.url + "/generate", json=body)

                tasks = [asyncio.create_task(one(i)) for i in range(n)]
                await asyncio.sleep(0.5)  # some requests are in flight on both prefills
                kill9(p1)
                return await asyncio.gather(*tasks)

        responses = asyncio.run(run(40))
        failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert len(failed) == 0, f"{len(failed)}/40 failed despite a live prefill: {failed}"
        _wait(lambda: not router.workers()[p1.url]["healthy"], 5, "dead prefill marked unhealthy")
        assert router.workers()[p2.url]["healthy"]
        assert_idle(decode)
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
