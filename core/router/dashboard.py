"""The router's status page: ``GET /dashboard`` (static HTML) and ``/dashboard/state`` (JSON).

The page polls the state once a second. The state is read from what the router
already holds (the worker pool, fed by the health checks), so watching the page
sends nothing to the workers and costs the request path nothing.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

import pdcore
from pdcore.router.dashboard_page import PAGE
from pdcore.router.workers import ROLES, Worker, WorkerPool

REFRESH_MS = 1000
# Keys of a worker's PD stats the page shows (the rest of its server info stays out).
PD_KEYS = (
    "mode",
    "bootstrap_queue",
    "prealloc_queue",
    "transfer_queue",
    "held_pages",
    "active_rooms",
    "inflight_transfers",
    "bytes_transferred",
    "rooms_succeeded",
    "rooms_failed",
    "bootstrap_failed",
    "transfer_failed",
    "local_prefill_reqs",
    "recent_transfer_speed_gb_s",
    "recent_transfer_latency_ms",
)


def dashboard_router(pool: WorkerPool, args) -> APIRouter:
    """``args``: the router's ``RouterArgs``."""
    router = APIRouter()
    started = time.time()

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard():
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    @router.get("/dashboard/state")
    async def dashboard_state():
        return state(pool, args, started)

    return router


def state(pool: WorkerPool, args, started: float) -> dict:
    """What the page shows. ``totals.in_flight`` counts each request once: a PD request
    is on a prefill and a decode at once, so only the decode side (or, without PD,
    the regular worker) counts; ``in_flight_by_role`` has each side's count."""
    workers = pool.all()
    by_role = {role: sum(w.in_flight for w in pool.of_role(role)) for role in ROLES}
    answering = "decode" if args.pd_disaggregation else "regular"
    return {
        "router": {
            "version": pdcore.__version__,
            "pd_disaggregation": bool(args.pd_disaggregation),
            "uptime_s": round(time.time() - started, 1),
            "time": round(time.time(), 3),
            "refresh_ms": REFRESH_MS,
            "health_check_interval_secs": args.health_check_interval_secs,
        },
        "totals": {
            "workers": len(workers),
            "healthy": sum(w.healthy for w in workers),
            "in_flight": by_role[answering],
            "in_flight_by_role": by_role,
            "kv_transfer_gb_s": sum(w.kv_rate.gb_s for w in workers),
        },
        "roles": {role: [worker_state(w) for w in pool.of_role(role)] for role in ROLES},
    }


def worker_state(w: Worker) -> dict:
    return {
        **w.describe(),
        "reported_load": w.reported_load,
        "pd": {k: w.pd[k] for k in PD_KEYS if k in w.pd},
        "kv_history": [list(sample) for sample in w.kv_rate.history],
    }
