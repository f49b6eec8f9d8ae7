"""A burst of concurrent requests is spread by load-based policies (stub workers, fast)."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from router.cluster import request_counts, wait_for
from router.router_process import RouterProcess
from router.stub_worker import StubWorker

pytestmark = pytest.mark.timeout(60)


def _slow(body):
    time.sleep(0.3)
    return 200, {"text": "ok", "meta_info": {}}


@pytest.mark.parametrize("policy", ["cache_aware", "power_of_two"])
def test_a_burst_of_distinct_prompts_is_spread_over_every_worker(policy):
    """All 8 arrive before any is answered: each pick must see the ones before it."""
    stubs = [StubWorker(_slow) for _ in range(4)]
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", stubs[0].url, "8998", "--prefill", stubs[1].url,
        "8998", "--decode", stubs[2].url, "--decode", stubs[3].url, "--policy", policy,
    )  # fmt: skip
    try:

        async def burst():
            async with httpx.AsyncClient(timeout=30) as client:
                bodies = [{"text": f"{i} distinct prompt number {i}"} for i in range(8)]
                return await asyncio.gather(
                    *(client.post(router.url + "/generate", json=b) for b in bodies)
                )

        assert all(r.status_code == 200 for r in asyncio.run(burst()))
        counts = request_counts(router)
        for stub in stubs:
            # power_of_two samples two of two, so it is as even as cache_aware here
            assert counts.get(stub.url, 0) >= 3, (policy, counts)
        wait_for(
            lambda: all(w["in_flight"] == 0 for w in router.workers().values()),
            5,
            "in_flight back to 0",
        )
    finally:
        router.stop()
        for stub in stubs:
            stub.stop()


def _quick(body):
    return 200, {"text": "ok", "meta_info": {}}


def _random_prompt(rng: random.Random) -> str:
    return " ".join(str(rng.randrange(10**6)) for _ in range(30))


@pytest.fixture(scope="module")
def two_prefills():
    """A PD router with the default policy (cache_aware) over 2 prefills and 1 decode."""
    stubs = [StubWorker(_quick) for _ in range(3)]
    router = RouterProcess(
        "--pd-disaggregation", "--prefill", stubs[0].url, "8998", "--prefill", stubs[1].url,
        "8998", "--decode", stubs[2].url,
    )  # fmt: skip
    yield router, stubs[:2]
    router.stop()
    for stub in stubs:
        stub.stop()


def _send(router, prompts: list[str]) -> None:
    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(client.post(router.url + "/generate", json={"text": p}) for p in prompts)
            )

    assert all(r.status_code == 200 for r in asyncio.run(go()))


def _spread(router, prefills, send) -> list[float]:
    """Requests per prefill while ``send()`` runs."""
    before = request_counts(router)
    send()
    after = request_counts(router)
    return [after.get(p.url, 0) - before.get(p.url, 0) for p in prefills]


def test_cache_aware_spreads_random_prompts_sent_concurrently(two_prefills):
    router, prefills = two_prefills
    rng = random.Random(11)
    got = _spread(router, prefills, lambda: _send(router, [_random_prompt(rng) for _ in range(40)]))
    assert sum(got) == 40, got
    assert max(got) <= 24, f"40 unrelated prompts split {got} over 2 prefills (at most 60%)"


def test_cache_aware_spreads_random_prompts_arriving_one_by_one(two_prefills):
    """A light load: each request is answered before the next comes, so both prefills
    have load 0 at every pick. The tie must not always go to the first one."""
    router, prefills = two_prefills
    rng = random.Random(13)

    def one_by_one():
        for _ in range(40):
            r = router.post("/generate", {"text": _random_prompt(rng)})
            assert r.status_code == 200, r.text

    got = _spread(router, prefills, one_by_one)
    assert sum(got) == 40, got
    assert max(got) <= 24, f"40 unrelated prompts split {got} over 2 prefills (at most 60%)"


def test_cache_aware_keeps_a_shared_prefix_on_one_prefill(two_prefills):
    router, prefills = two_prefills
    rng = random.Random(12)
    system = "You are a terse assistant; answer with one word only, no punctuation. " * 5
    prompts = [system + _random_prompt(rng)[:60] for _ in range(20)]
    got = sorted(_spread(router, prefills, lambda: _send(router, prompts)))
    assert got == [0, 20], f"prompts sharing a long prefix were split {got} over 2 prefills"
