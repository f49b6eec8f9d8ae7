"""The router's app: SGLang's and OpenAI's endpoints plus worker management.

The generation paths (``POST /generate``, ``/v1/completions``,
``/v1/chat/completions``) are answered by a plain ASGI handler in front of the
FastAPI app (no routing, no request object, one ``json.loads``); everything else
(management, info, metrics, lifespan) is FastAPI's. In front of both, plain ASGI
layers: the admin guard (``admin.py``: worker management and profiling need
``--admin-api-key``, else ``--api-key``), the client key (``pdcore.api_key``) and
the body size limit (``pdcore.body_limit``). Workers get their own key
(``--worker-api-key``, default ``--api-key``) on every call (``Worker.auth``).
"""

from __future__ import annotations

import asyncio
import json
import random
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import aiohttp
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

import pdcore
from pdcore.api_key import OPEN_PATHS, ApiKeyMiddleware
from pdcore.body_limit import BodyLimitMiddleware
from pdcore.router.admin import ADMIN_PATHS, AdminGuard, refusal
from pdcore.router.dashboard import dashboard_router
from pdcore.router.health import HealthChecker
from pdcore.router.metrics import RouterMetrics
from pdcore.router.policies import make_policy
from pdcore.router.profile import profile_router
from pdcore.router.proxy import UPSTREAM_ERRORS, Proxy, error, make_session
from pdcore.router.readiness import readiness
from pdcore.router.workers import CircuitBreaker, WorkerPool

GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")
# Probes that answer without --api-key, like /health (sgl-router's /liveness, /readiness).
PROBE_PATHS = frozenset(("/liveness", "/readiness"))
TIMEOUT = aiohttp.ClientTimeout(total=30)


def build_app(args):
    """``args``: a ``RouterArgs`` (see ``pdcore.launch_router``)."""
    pool = WorkerPool(
        lambda: CircuitBreaker(args.cb_failure_threshold, args.cb_cooldown_secs),
        api_key=args.workers_key,
    )
    roles = ("prefill", "decode") if args.pd_disaggregation else ("regular",)
    for spec in args.prefill:
        pool.add(spec.url, "prefill", spec.bootstrap_port)
    for spec in args.decode:
        pool.add(spec.url, "decode")
    for url in args.worker_urls:
        pool.add(url, "regular")
    rng = random.Random()
    thresholds = {
        "cache_threshold": args.cache_threshold,
        "balance_abs": args.balance_abs_threshold,
        "balance_rel": args.balance_rel_threshold,
    }
    policies = {
        "prefill": make_policy(args.prefill_policy or args.policy, rng, **thresholds),
        "decode": make_policy(args.decode_policy or args.policy, rng, **thresholds),
        "regular": make_policy(args.policy, rng, **thresholds),
    }
    metrics = RouterMetrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        session = make_session()
        checker = HealthChecker(
            pool, session, args.health_check_interval_secs, args.health_check_timeout_secs
        )
        state["checker"] = checker
        state["proxy"] = Proxy(
            pool, policies, session, metrics, checker, args.pd_disaggregation, args.max_retries, rng
        )
        await checker.check_all()  # so readiness is known before the first request
        checker.start()
        yield
        await checker.stop()
        await session.close()

    app = FastAPI(title="pdcore router", lifespan=lifespan)

    async def generation(scope, receive, send) -> None:
        """ASGI handler of a generation path: read the body, parse it once, route it."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            response = error(400, f"request body is not valid JSON: {e}")
        else:
            if not isinstance(body, dict):
                kind = type(body).__name__
                response = error(400, f"request body must be a JSON object, got {kind}")
            else:

                async def disconnected() -> None:
                    """Returns once the client went away (uvicorn does not cancel us)."""
                    while (await receive())["type"] != "http.disconnect":
                        pass

                response = await state["proxy"].route(
                    scope["path"], body, raw, scope["headers"], disconnected
                )
        await response(scope, receive, send)

    for path in GENERATION_PATHS:  # reached through FastAPI only by other methods: 405
        app.router.routes.append(Route(path, _ASGIEndpoint(generation), methods=["POST"]))

    async def from_one(path: str) -> Response:
        """GET ``path`` from a healthy decode (or regular) worker, as it answers."""
        workers = pool.available(roles[-1])
        if not workers:
            return error(503, f"no healthy {roles[-1]} worker available")
        try:
            w = workers[0]
            async with state["proxy"].session.get(
                w.url + path, headers=w.auth({}), timeout=TIMEOUT
            ) as r:
                content = await r.read()
        except UPSTREAM_ERRORS as e:
            return error(502, f"{workers[0].url}{path} failed: {type(e).__name__}: {e}")
        return Response(content, r.status, media_type=r.headers.get("content-type"))

    # With an admin key, the client's Authorization is that key: never pass it on.
    forward_auth = args.admin_key is None
    app.include_router(profile_router(pool, lambda: state["proxy"].session, forward_auth))

    app.include_router(dashboard_router(pool, args))  # /dashboard, /dashboard/state

    @app.get("/v1/models")
    async def models():
        return await from_one("/v1/models")

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def model_info():
        return await from_one("/get_model_info")

    def ready() -> JSONResponse:
        """200 when every role has a healthy worker, else 503 saying which has none."""
        state = readiness(pool, roles)
        if state.ready:
            return JSONResponse(state.body())
        response = error(503, f"router cannot route: {state.message}")
        body = {**json.loads(response.body), **state.body()}
        return JSONResponse(body, status_code=503)

    @app.api_route("/health", methods=["GET", "POST"])
    async def health():
        return ready()

    @app.get("/readiness")
    async def readiness_route():
        return ready()

    @app.get("/liveness")
    async def liveness():
        """The router process answers (whatever its workers do)."""
        return {"status": "alive"}

    @app.api_route("/health_generate", methods=["GET", "POST"])
    async def health_generate():
        """Every role must have a worker that passes its own ``/health_generate``."""
        picks = []
        for role in roles:
            workers = pool.available(role)
            if not workers:
                return error(503, f"no healthy {role} worker available")
            picks.append(workers[0])
        session = state["proxy"].session

        async def status(w) -> int:
            url = w.url + "/health_generate"
            async with session.get(url, headers=w.auth({}), timeout=TIMEOUT) as r:
                await r.read()
                return r.status

        results = await asyncio.gather(*(status(w) for w in picks), return_exceptions=True)
        for w, r in zip(picks, results, strict=True):
            if isinstance(r, BaseException) or r != 200:
                why = r if isinstance(r, BaseException) else f"status {r}"
                return error(503, f"{w.role} worker {w.url} failed /health_generate: {why}")
        return Response(status_code=200)

    @app.get("/get_server_info")
    @app.get("/server_info")
    async def server_info():
        return {
            "router": {
                "version": pdcore.__version__,
                "pd_disaggregation": args.pd_disaggregation,
                "host": args.host,
                "port": args.port,
                "policies": {role: policies[role].name for role in roles},
                "cache_threshold": args.cache_threshold,
                "balance_abs_threshold": args.balance_abs_threshold,
                "balance_rel_threshold": args.balance_rel_threshold,
                "max_retries": args.max_retries,
                "api_key": "***" if args.api_key else None,
                "admin_api_key": "***" if args.admin_api_key else None,
                "worker_api_key": "***" if args.workers_key else None,
            },
            "workers": [w.describe() for w in pool.all()],
        }

    @app.get("/metrics")
    async def metrics_route():
        return Response(metrics.render(pool.all()), media_type="text/plain; version=0.0.4")

    @app.get("/list_workers")
    async def list_workers():
        workers = pool.all()
        return {"urls": [w.url for w in workers], "workers": [w.describe() for w in workers]}

    @app.post("/add_worker")
    async def add_worker(
        url: str,
        role: str | None = None,
        bootstrap_port: int | None = None,
        api_key: str | None = None,
    ):
        """``api_key``: the worker's own key (SGLang's parameter); default the router's
        --worker-api-key: the caller passed the admin guard, so it may have it."""
        role = role or roles[-1]
        if role not in roles:
            return error(400, f"role must be one of {', '.join(roles)} in this mode, got {role!r}")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return error(400, f"url must be http(s)://HOST:PORT, got {url!r}")
        try:
            worker = pool.add(url, role, bootstrap_port, api_key)
        except KeyError as e:
            return error(409, str(e.args[0]))
        await state["checker"].check(worker)
        return {"added": worker.describe()}

    @app.post("/remove_worker")
    async def remove_worker(url: str):
        try:
            worker = pool.remove(url)
        except KeyError:
            return error(404, f"no worker {url} is registered")
        return {"removed": worker.describe()}

    async def router_app(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in GENERATION_PATHS:
            if scope["method"] == "POST":
                return await generation(scope, receive, send)
        return await app(scope, receive, send)

    outer = BodyLimitMiddleware(router_app, args.max_payload_size)
    if args.api_key:  # the admin paths are the admin guard's to check
        open_paths = OPEN_PATHS | PROBE_PATHS | ADMIN_PATHS
        outer = ApiKeyMiddleware(outer, args.api_key, open_paths=open_paths)
    refused = refusal(args.admin_key, bool(args.workers_key), args.host)
    outer = AdminGuard(outer, args.admin_key, refused)
    outer.fastapi = app
    outer.readiness = lambda: readiness(pool, roles)  # for the startup line
    return outer


class _ASGIEndpoint:
    """A plain ASGI callable as a Starlette route endpoint (not a request/response one)."""

    def __init__(self, handler):
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        await self.handler(scope, receive, send)
