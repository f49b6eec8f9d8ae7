"""When requests go out: Poisson arrivals at ``--request-rate`` (seeded), capped by
``--max-concurrency``; warm-up requests first, outside the measured run.

Arrivals follow an absolute schedule (start + cumulative gaps), so a slow event
loop delays a request but never shifts every later one.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pdcore.benchserve.client import RequestResult
from pdcore.benchserve.datasets import RequestSpec

Send = Callable[[RequestSpec], Awaitable[RequestResult]]


def arrival_offsets(num: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: the first at 0, then
    exponential gaps of mean ``1/rate`` (a Poisson process); all 0 for ``rate=inf``."""
    if math.isinf(rate):
        return [0.0] * num
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for i in range(num):
        if i:
            t += rng.expovariate(rate)
        offsets.append(t)
    return offsets


@dataclass
class LoadRun:
    results: list[RequestResult]
    start: float  # perf_counter at the first send
    duration: float  # seconds from the first send to the last completion


async def run_load(
    specs: Sequence[RequestSpec],
    send: Send,
    rate: float,
    max_concurrency: int | None,
    seed: int,
    on_done: Callable[[RequestResult], None] = lambda r: None,
) -> LoadRun:
    """Send ``specs`` on the Poisson schedule, at most ``max_concurrency`` in flight
    (a request whose arrival comes while the cap is reached waits for a slot)."""
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    offsets = arrival_offsets(len(specs), rate, seed)

    async def one(spec: RequestSpec) -> RequestResult:
        if slots is None:
            result = await send(spec)
        else:
            async with slots:
                result = await send(spec)
        on_done(result)
        return result

    start = time.perf_counter()
    tasks = []
    for spec, offset in zip(specs, offsets, strict=True):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(spec)))
    results = await asyncio.gather(*tasks)
    return LoadRun(list(results), start, time.perf_counter() - start)


async def warm_up(specs: Sequence[RequestSpec], send: Send) -> list[RequestResult]:
    """Send the warm-up requests all at once and wait for them; not part of any statistic."""
    return list(await asyncio.gather(*(send(s) for s in specs)))
