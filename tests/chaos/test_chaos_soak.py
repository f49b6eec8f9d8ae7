"""Chaos against a real 1P1D cluster: abort storm, KV exhaustion, fault matrix, soak.

One cluster for the module (``chaos_cluster.py``): prefill and decode (tiny random
Qwen3, Mooncake over TCP, PD timeouts of a few seconds, decode's KV pool small enough
to make it wait for pages and retract), the PD router in front, and fault proxies on
router -> prefill, router -> decode and decode -> prefill's bootstrap server. The
tests run in this order on it, each ending with every process healthy and both KV
pools idle with no page leaked:

* a client abort storm (streams cancelled before the first byte or mid-way);
* KV exhaustion on decode (retraction), answers still the greedy reference;
* the fault matrix: every proxy fault on every hop, one request at a time;
* the soak: ``profile.REQUESTS`` requests, 8 at a time, ``/generate`` and
  ``/v1/completions``, streamed or not, prompts of 11 to ~500 tokens, 8 to 64 new
  tokens; ``FAULT_RATE`` of them get one fault (a proxy fault on one of the three
  hops, or a client abort), and meanwhile each process is paused (SIGSTOP/SIGCONT)
  and killed with SIGKILL then restarted on the same ports (``profile.EVENTS``).

Every request must end within its bound as a full, correct answer or a clear error
(``load.py``). The figures are printed at the end of pytest's summary.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import httpx
import pytest
from chaos import profile
from chaos.chaos_cluster import PD_ENV, ChaosCluster
from chaos.failure_bound import Kill, bound
from chaos.fault_proxy import Fault
from chaos.load import REF_MAX_NEW, Client, Plan, Tally, categorize, error_message, plans

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if profile.LONG else 420)]

# (weight, (target, kind)) of the per-request faults
FAULT_MENU = [
    *((1, (hop, kind)) for hop in ("prefill", "decode", "bootstrap")
      for kind in ("reset", "drop", "blackhole", "delay", "slow")),
    (1, ("client", "abort")),
]  # fmt: skip
IDLE_TIMEOUT_S = 30.0  # > BOOTSTRAP_TIMEOUT: rooms whose peer vanished expire by then


def make_fault(kind: str, rng: random.Random) -> Fault:
    if kind == "reset":  # cut the request, or the answer (headers, body, stream)
        if rng.random() < 0.5:
            return Fault("reset", after_bytes=rng.randrange(0, 1500))
        return Fault("reset", after_bytes=rng.randrange(0, 4000), answer_only=True)
    if kind == "blackhole":
        return Fault("blackhole", hold_s=rng.uniform(1.0, 6.0))
    if kind == "delay":
        return Fault("delay", delay_ms=rng.uniform(100, 2000))
    if kind == "slow":
        return Fault("slow", delay_ms=rng.uniform(2, 15), chunk=rng.choice([64, 256, 1024]))
    return Fault(kind)


# ---- the cluster and the references ------------------------------------------------


@pytest.fixture(scope="module")
def pool(prompts) -> list[list[int]]:
    """The prompt pool: the e2e prompts and 8 distinct random ones of 150..500 tokens."""
    rng = random.Random(profile.SEED + 100)
    long = [[rng.randrange(100, 40000) for _ in range(rng.randrange(150, 500))] for _ in range(8)]
    return [*prompts, *long]


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    c = ChaosCluster(qwen3_path, seed=profile.SEED)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def refs(cluster, pool) -> list[dict]:
    """Each prompt's greedy answer (REF_MAX_NEW tokens, top-2 logprobs) through the
    cluster before any fault, one request at a time (no retraction)."""
    out = []
    with httpx.Client(timeout=60) as client:
        for ids in pool:
            body = {
                "input_ids": ids,
                "return_logprob": True,
                "top_logprobs_num": 2,
                "sampling_params": {
                    "max_new_tokens": REF_MAX_NEW,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            }
            r = client.post(cluster.router.url + "/generate", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def _model(cluster) -> str:
    return cluster.router.get("/v1/models").json()["data"][0]["id"]


# ---- checks -------------------------------------------------------------------------


def _idle_state(info: dict) -> dict:
    """What must be zero on an idle PD server, from its /get_server_info."""
    pd = info.get("disaggregation") or {}
    state = {
        "running": info["engine"]["num_running_reqs"],
        "waiting": info["engine"]["num_waiting_reqs"],
        "used_pages": info["kv_cache"]["used_pages"],
    }
    for key in (
        "active_rooms", "held_pages", "pending_requests", "inflight_transfers",
        "bootstrap_queue", "prealloc_queue", "transfer_queue", "quarantined_pages",
        "rooms_unsettled",
    ):  # fmt: skip
        if key in pd:
            state[key] = pd[key]
    return state


def wait_idle(server, timeout: float = IDLE_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = _idle_state(server.get("/get_server_info").json())
        if not any(state.values()):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"{server.url} not idle after {timeout}s: {state}\n{server.log_tail()}")
        time.sleep(0.25)


def leaked_pages(server) -> int:
    """Flush the prefix cache of an idle server: pages not back on the free list."""
    r = server.post("/flush_cache")
    assert r.status_code == 200, f"{server.url} refused to flush: {r.text}"
    kv = server.kv_pages()
    return kv["total_pages"] - kv["free_pages"]


def wait_router_healthy(cluster, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        workers = cluster.router.workers()
        if all(w["healthy"] and w["circuit"] == "closed" for w in workers.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"router does not see every worker healthy: {workers}")
        time.sleep(0.25)


def assert_cluster_healthy_and_idle(cluster) -> dict:
    """Every process alive and healthy, the router sees both workers healthy, both KV
    pools idle and nothing leaked; the leaked pages per role (all 0)."""
    for role in ("prefill", "decode", "router"):
        proc = cluster._proc(role)
        assert proc.proc.poll() is None, f"{role} exited {proc.proc.returncode}"
        assert proc.get("/health").status_code == 200, role
    wait_router_healthy(cluster)
    leaked = {}
    for role, server in (("prefill", cluster.prefill), ("decode", cluster.decode)):
        wait_idle(server)
        leaked[role] = leaked_pages(server)
    assert leaked == {"prefill": 0, "decode": 0}, f"KV pages leaked: {leaked}"
    return leaked


# ---- the tests ----------------------------------------------------------------------


def assert_greedy_answers_after(client: Client, pool, n: int, seed: int) -> None:
    """After a disturbance, n fault-free requests must all come back ok and equal
    to their greedy reference (Client.run checks the tokens)."""
    check = plans(n, len(pool), 0.0, [], random.Random(seed))

    async def run():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(client.run(c, p) for p in check))

    outcomes = asyncio.run(run())
    assert all(o.kind == "ok" for o in outcomes), (
        f"requests after the disturbance failed: {outcomes}"
    )


def test_client_abort_storm_leaves_no_page_behind(cluster, pool, refs):
    """``ABORT_STORM`` streamed requests at once, each cancelled at a random point
    (before the first byte or after some tokens); then both pools idle, no page leaked,
    and the next requests are answered correctly."""
    rng = random.Random(profile.SEED + 7)
    n = profile.ABORT_STORM
    url = cluster.router.url

    async def one(client, i):
        ids = pool[rng.randrange(len(pool))]
        body = {
            "input_ids": ids,
            "stream": True,
            "sampling_params": {
                "max_new_tokens": REF_MAX_NEW,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        after_events = rng.randrange(0, REF_MAX_NEW) if i % 2 else None
        after_s = rng.uniform(0, 2.0)
        events = 0

        async def read():
            nonlocal events
            async with client.stream("POST", url + "/generate", json=body) as r:
                if r.status_code != 200:
                    message = error_message((await r.aread()).decode())
                    if message is None:
                        return "bad"  # an error without a message
                    return f"error {categorize(r.status_code, message)}"
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events += 1
                        message = error_message(line[6:])
                        if message is not None:
                            return f"stream error {categorize(200, message)}"
                        if after_events is not None and events > after_events:
                            return "aborted after tokens"
            return "finished first"

        try:
            return await asyncio.wait_for(read(), after_s if after_events is None else 30)
        except asyncio.TimeoutError:
            return "aborted after time" if after_events is None else "hang"

    async def storm():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as c:
            return await asyncio.gather(*(one(c, i) for i in range(n)))

    start = time.monotonic()
    results = Counter(asyncio.run(storm()))
    assert "hang" not in results and "bad" not in results, results
    assert results["aborted after tokens"] + results["aborted after time"] >= n // 2, results
    leaked = assert_cluster_healthy_and_idle(cluster)
    assert_greedy_answers_after(
        Client(url, pool, refs, _model(cluster), [], lambda plan: None), pool, 8, seed=1
    )
    profile.FIGURES["abort storm"] = {
        "requests": n,
        **dict(results),
        "leaked_pages": leaked,
        "seconds": round(time.monotonic() - start, 1),
    }


def test_decode_kv_exhaustion_retracts_and_answers_stay_greedy(cluster, pool, refs):
    """Two waves of 16 requests at once, 64 new tokens each, on decode's 48-page pool:
    prompts of any length (a retracted long request must wait while requests waiting
    for their KV hold pages), then short prompts whose outputs outgrow the pool. Decode
    waits for pages and retracts running requests (it recomputes them itself); every
    answer is still the greedy reference."""
    retracted = cluster.retractions()
    client = Client(cluster.router.url, pool, refs, _model(cluster), [], lambda p: None)
    rng = random.Random(profile.SEED + 3)
    short = [i for i, ids in enumerate(pool) if len(ids) < 64]
    waves = [
        [rng.randrange(len(pool)) for _ in range(16)],
        [short[i % len(short)] for i in range(16)],
    ]

    async def run(prompts):
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(
                *(
                    client.run(c, Plan(i, p, REF_MAX_NEW, ("generate", "generate_stream")[i % 2]))
                    for i, p in enumerate(prompts)
                )
            )

    outcomes = [o for prompts in waves for o in asyncio.run(run(prompts))]
    bad = [o for o in outcomes if o.kind != "ok"]
    assert not bad, "\n".join(f"{o.category}: {o.message}" for o in bad)
    retractions = cluster.retractions() - retracted
    assert retractions > 0, "decode never ran out of KV pages"
    leaked = assert_cluster_healthy_and_idle(cluster)
    profile.FIGURES["kv exhaustion"] = {
        "requests": len(outcomes),
        "ok": len(outcomes),
        "near_tie": sum(o.near_tie for o in outcomes),
        "decode_retractions": retractions,
        "leaked_pages": leaked,
    }


# The fault matrix: (hop, what the armed fault waits for, fault), one request each way.
_POST = b"POST /generate"
MATRIX = [
    *(
        (hop, _POST, fault)
        for hop in ("prefill", "decode")
        for fault in (
            *(Fault("reset", after_bytes=n) for n in (0, 60, 300)),  # the request cut
            # the answer cut: in the status line, the headers, the body or the stream
            *(Fault("reset", after_bytes=n, answer_only=True)
              for n in (0, 60, 130, 200, 400, 1200)),
            Fault("drop"),
            Fault("blackhole", hold_s=1.5),
            Fault("delay", delay_ms=500),
            Fault("slow", delay_ms=5, chunk=64, hold_s=3),
        )
    ),
    *(
        ("bootstrap", b"TransferRequest", fault)
        for fault in (
            Fault("reset", after_bytes=0),
            Fault("reset", after_bytes=0, answer_only=True),
            Fault("reset", after_bytes=20, answer_only=True),
            Fault("drop"),
            Fault("blackhole", hold_s=1.5),
            Fault("delay", delay_ms=500),
            Fault("slow", delay_ms=5, chunk=16, hold_s=3),
        )
    ),
    ("bootstrap", b"Heartbeat", Fault("drop")),
    ("bootstrap", b"Heartbeat", Fault("blackhole", hold_s=2.5)),
]  # fmt: skip


def acceptable(hop: str, fault: Fault, api: str) -> tuple[str, ...]:
    """The outcomes a matrix request may end with; a full answer unless said below.

    Only a cut of decode's streamed answer may end otherwise: once the router has
    relayed the 200 and SSE events it cannot retry, so an SSE error event before
    ``[DONE]`` is the correct end (a cut still inside decode's headers is retried, so
    ``ok`` too). Nothing else may fail: a request cut, dropped or blackholed, or an
    answer cut before the client saw a byte, the router retries; prefill's answer it
    reads whole before relaying anything; a fault on a transfer request or heartbeats
    fails the room before decode's answer starts, and the router retries the pair; a
    delay or a slow link is only slower. So ``error`` is never acceptable here (with
    ``--max-retries 0`` every fault but the delays and slow links ends in one).
    """
    if hop == "decode" and fault.kind == "reset" and fault.answer_only and api.endswith("_stream"):
        return ("ok", "stream_error")
    return ("ok",)


def label(fault: Fault) -> str:
    """A matrix fault in a few characters, for the figures and failure messages."""
    if fault.kind == "reset":
        return f"reset {'answer' if fault.answer_only else 'request'}@{fault.after_bytes}"
    if fault.kind == "blackhole":
        return f"blackhole {fault.hold_s:g}s"
    if fault.kind == "delay":
        return f"delay {fault.delay_ms:g}ms"
    if fault.kind == "slow":
        return f"slow {fault.chunk}B/{fault.delay_ms:g}ms for {fault.hold_s:g}s"
    return fault.kind


def test_fault_matrix_every_fault_on_every_hop(cluster, pool, refs):
    """Each fault of ``MATRIX`` armed on its hop for one ``/generate`` request, plain
    then streamed, one at a time: each ends as a full answer (or, where ``acceptable``
    says why, a clear error), the fault fired, and afterwards nothing is held."""
    client = Client(cluster.router.url, pool, refs, _model(cluster), [], lambda p: None)
    table: Counter = Counter()
    bad = []

    async def run():
        async with httpx.AsyncClient(timeout=60) as c:
            for n, (hop, match, fault) in enumerate(MATRIX):
                for api in ("generate", "generate_stream"):
                    proxy = cluster.proxies[hop]
                    before = sum(proxy.snapshot()["drawn"].values())
                    proxy.arm(fault, match=match)
                    began = time.monotonic()
                    outcome = await client.run(c, Plan(n, n % len(pool), 32, api))
                    deadline = time.monotonic() + 5  # a heartbeat comes every second
                    while (fired := sum(proxy.snapshot()["drawn"].values()) > before) is False:
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.1)
                    if cluster.disarm() or not fired:
                        seen = [(round(t - began, 2), b[:160]) for t, b in proxy.recent]
                        bad.append(f"{hop} {fault} {api}: the fault never fired; {outcome}; {seen}")
                    if outcome.kind not in acceptable(hop, fault, api):
                        wanted = " or ".join(acceptable(hop, fault, api))
                        bad.append(f"{hop} {label(fault)} {api}: wanted {wanted}, got {outcome}")
                    table[f"{hop} {label(fault)} {api}: {outcome.kind} {outcome.category}"] += 1

    start = time.monotonic()
    asyncio.run(run())
    assert not bad, "\n".join(bad)
    leaked = assert_cluster_healthy_and_idle(cluster)
    profile.FIGURES["fault matrix"] = {
        "requests": 2 * len(MATRIX),
        "outcomes": dict(sorted(table.items())),
        "leaked_pages": leaked,
        "seconds": round(time.monotonic() - start, 1),
    }


def test_soak_with_injected_faults(cluster, pool, refs):
    rng = random.Random(profile.SEED)
    work = plans(profile.REQUESTS, len(pool), profile.FAULT_RATE, FAULT_MENU, rng)
    fault_rng = random.Random(profile.SEED + 1)
    router_kills: list[list] = []  # [start, end] of each router kill and restart
    kills: list[Kill] = []  # every kill and restart, for the failure bound
    events_done: list[dict] = []
    url = cluster.router.url

    def arm(plan) -> None:
        target, kind = plan.fault
        match = None if target == "bootstrap" else b"POST "  # not a health check
        cluster.proxies[target].arm(make_fault(kind, fault_rng), match=match)

    client = Client(url, pool, refs, _model(cluster), router_kills, arm)
    tally = Tally()
    finished = 0
    before = {name: p.snapshot() for name, p in cluster.proxies.items()}
    retractions_before = cluster.retractions()
    start = time.monotonic()

    def do_event(action: str, role: str, seconds: float) -> None:
        t = time.monotonic()
        if action == "pause":
            cluster.pause(role, seconds)
        else:
            if role == "router":
                router_kills.append([t, None])
            cluster.kill9(role)
            cluster.restart(role)
            if role == "router":
                router_kills[-1][1] = time.monotonic()
            kills.append(Kill(role, t, time.monotonic()))
        events_done.append(
            {
                "event": f"{action} {role}",
                "after_requests": finished,
                "at_s": round(t - start, 1),
                "seconds": round(time.monotonic() - t, 1),
            }
        )

    async def monkey():
        for share, action, role, seconds in profile.EVENTS:
            while finished < share * len(work):
                await asyncio.sleep(0.05)
            await asyncio.to_thread(do_event, action, role, seconds)

    async def soak():
        nonlocal finished
        queue: asyncio.Queue = asyncio.Queue()
        for plan in work:
            queue.put_nowait(plan)

        async def worker(c):
            nonlocal finished
            while not queue.empty():
                plan = queue.get_nowait()
                tally.add(await client.run(c, plan))
                finished += 1

        limits = httpx.Limits(max_connections=profile.CONCURRENCY * 2)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            chaos = asyncio.create_task(monkey())
            await asyncio.gather(*(worker(c) for _ in range(profile.CONCURRENCY)))
            if not chaos.done():  # events after the last request still run
                await chaos
            chaos.result()

    asyncio.run(soak())
    soak_s = time.monotonic() - start
    unfired = cluster.disarm()
    outcomes = tally.kinds()
    injected, drawn = Counter(), Counter()
    for name, proxy in cluster.proxies.items():
        snap = proxy.snapshot()
        for kind, n in snap["injected"].items():
            injected[f"{name} {kind}"] += n - before[name]["injected"].get(kind, 0)
        for kind, n in snap["drawn"].items():
            drawn[f"{name} {kind}"] += n - before[name]["drawn"].get(kind, 0)
    injected["client abort"] = client.client_aborts
    figures = {
        "profile": profile.NAME,
        "requests": len(work),
        "attempts": sum(o.attempts for o in tally.outcomes),
        "outcomes": dict(outcomes),
        "ok_near_tie": sum(o.near_tie for o in tally.outcomes),
        "failed_by_kind": {
            kind: dict(tally.categories(kind))
            for kind in ("error", "stream_error", "router_gone", "violation")
            if outcomes[kind]
        },
        "client_retries": dict(client.retries),
        "faults_planned": sum(p.fault is not None for p in work),
        "faults_injected": dict(sorted(injected.items())),
        "faults_armed_never_drawn": unfired,
        "resets_drawn_not_fired": drawn["prefill reset"]
        + drawn["decode reset"]
        + drawn["bootstrap reset"]
        - injected["prefill reset"]
        - injected["decode reset"]
        - injected["bootstrap reset"],
        "process_events": events_done,
        "failure_bound": bound(tally.outcomes, kills, injected).figures(),
        "decode_retractions": cluster.retractions() - retractions_before,
        "soak_seconds": round(soak_s, 1),
        "pd_env": PD_ENV,
    }
    profile.FIGURES["soak"] = figures
    print(json.dumps(figures, indent=1))
    violations = [o for o in tally.outcomes if o.kind == "violation"]
    assert not violations, "\n".join(
        [
            *(
                f"{o.category} at {o.began - start:.1f}s, {o.elapsed:.1f}s long: "
                f"[{o.status}] {o.message[:300]}"
                for o in violations[:10]
            ),
            f"events: {events_done}",
            "router tracebacks:",
            *cluster.router_tracebacks(),
        ]
    )
    assert len(events_done) == len(profile.EVENTS), events_done
    # Every failure is a request in flight at a process kill, or a stream an injected
    # reset of decode's answer cut (``failure_bound.py``): a retry the router lost, or a
    # delay, slow link or pause it did not absorb, fails the soak.
    accounted = bound(tally.outcomes, kills, injected)
    assert accounted.explained(), "\n".join(
        [
            f"failures not explained by injected faults or kills: {accounted.figures()}",
            *(
                f"{o.kind} {o.category} at {o.began - start:.1f}s, {o.elapsed:.1f}s long: "
                f"[{o.status}] {o.message[:300]}"
                for o in accounted.outside_kills
            ),
            f"events: {events_done}",
            f"faults injected: {dict(injected)}",
        ]
    )

    # Afterwards: healthy, idle, nothing leaked, and correct answers again.
    figures["leaked_pages"] = assert_cluster_healthy_and_idle(cluster)
    assert_greedy_answers_after(client, pool, 16, seed=2)
    assert_cluster_healthy_and_idle(cluster)
