"""The router's ``/start_profile`` and ``/stop_profile``: fanned out to the workers.

The torch profiler cannot trace a prefill and a decode engine together, so the
router does not try: every worker profiles its own engine and names its trace
files by its role. The JSON body goes to each worker as it is, less ``role``
(``prefill``, ``decode``, or ``regular``/``null``), which picks the workers; without
it, all of them. The answer lists each worker's URL, role, status and reply; its
own status is 200 when every worker succeeded, else the first failure's (a worker
that cannot be reached counts as 502), so "already profiling" stays a 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pdcore.router.proxy import UPSTREAM_ERRORS, error
from pdcore.router.workers import ROLES, Worker, WorkerPool

# Stopping writes the whole trace before the worker answers.
TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=5)
ROLE_ALIASES = {"null": "regular"}


def profile_router(
    pool: WorkerPool, session: Callable[[], aiohttp.ClientSession], forward_auth: bool = True
) -> APIRouter:
    """Routes over ``pool``; ``session()``: the router's upstream client (made at startup);
    ``forward_auth``: pass the client's Authorization on to workers without a key."""
    router = APIRouter()

    async def fan_out(request: Request, path: str) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as e:
            return error(400, f"request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return error(400, f"request body must be a JSON object, got {type(body).__name__}")
        role = body.pop("role", None)
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role is not None and role not in ROLES:
            return error(400, f"role must be one of prefill, decode, regular; got {role!r}")
        workers = pool.of_role(role) if role else pool.all()
        if not workers:
            return error(503, f"no {role + ' ' if role else ''}worker is registered")
        auth = request.headers.get("authorization") if forward_auth else None
        headers = {"Authorization": auth} if auth else {}
        calls = (_call(session(), w, path, body, headers) for w in workers)
        results = await asyncio.gather(*calls)
        failed = [r["status"] for r in results if r["status"] != 200]
        return JSONResponse({"workers": results}, status_code=failed[0] if failed else 200)

    @router.post("/start_profile")
    async def start_profile(request: Request):
        return await fan_out(request, "/start_profile")

    @router.post("/stop_profile")
    async def stop_profile(request: Request):
        return await fan_out(request, "/stop_profile")

    return router


async def _call(session, worker: Worker, path: str, body: dict, headers) -> dict:
    """One worker's answer as ``{"url", "role", "status", "response"}``."""
    out = {"url": worker.url, "role": worker.role}
    try:
        post = session.post(
            worker.url + path, json=body, headers=worker.auth(headers), timeout=TIMEOUT
        )
        async with post as resp:
            text = await resp.text()
            status = resp.status
    except UPSTREAM_ERRORS as e:
        return {**out, "status": 502, "response": f"{type(e).__name__}: {e}"}
    try:
        reply = json.loads(text)
    except ValueError:
        reply = text
    return {**out, "status": status, "response": reply}
