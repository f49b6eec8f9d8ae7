"""Periodic health checks: feed each worker's circuit breaker and its reported load.

A worker that fails ``/health`` keeps counting failures until its circuit opens;
one that answers again closes it (readmitted). Checks run for open circuits
too, which is how a restarted worker comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp

from pdcore.router.workers import Worker, WorkerPool

log = logging.getLogger("pdcore.router")


class HealthChecker:
    def __init__(
        self, pool: WorkerPool, session: aiohttp.ClientSession, interval_s: float, timeout_s: float
    ):
        self.pool = pool
        self.session = session
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        """Checks every ``interval_s``; the first round is the caller's (``check_all``)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_all()

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(w) for w in self.pool.all()))

    async def check(self, worker: Worker) -> bool:
        was_healthy = worker.healthy
        try:
            url, auth = f"{worker.url}/health", worker.auth({})
            async with self.session.get(url, headers=auth, timeout=self.timeout) as r:
                await r.read()
            ok = r.status == 200
            error = None if ok else f"/health answered {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            ok, error = False, f"/health failed: {type(e).__name__}: {e}"
        if ok:
            worker.breaker.success()
            worker.last_error = None
            await self.refresh_info(worker)
        else:
            worker.breaker.failure()
            worker.last_error = error
        if was_healthy != worker.healthy:
            state = "healthy again" if worker.healthy else f"unhealthy ({error})"
            log.warning("%s worker %s is %s", worker.role, worker.url, state)
        return ok

    async def refresh_info(self, worker: Worker) -> dict | None:
        """Load (running + waiting), PD stats and KV rate, and for a prefill its
        bootstrap port if not given."""
        try:
            url = f"{worker.url}/get_server_info"
            async with self.session.get(url, headers=worker.auth({}), timeout=self.timeout) as r:
                content = await r.read()
            info = json.loads(content) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        if not isinstance(info, dict):
            return None
        engine = info.get("engine") or {}
        worker.reported_load = int(engine.get("num_running_reqs", 0) or 0) + int(
            engine.get("num_waiting_reqs", 0) or 0
        )
        if isinstance(info.get("disaggregation"), dict):
            worker.observe_pd(info["disaggregation"])
        port = info.get("disaggregation_bootstrap_port")
        if worker.role == "prefill" and worker.bootstrap_port is None and isinstance(port, int):
            worker.bootstrap_port = port
        return info
