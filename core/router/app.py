"""The router's FastAPI app: SGLang's and OpenAI's endpoints plus worker management."""

from __future__ import annotations

import asyncio
import json
import random
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

import pdcore
from pdcore.router.health import HealthChecker
from pdcore.router.metrics import RouterMetrics
from pdcore.router.policies import make_policy
from pdcore.router.proxy import Proxy, error
from pdcore.router.workers import CircuitBreaker, WorkerPool

GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


def build_app(args) -> FastAPI:
    """``args``: a ``RouterArgs`` (see ``pdcore.launch_router``)."""
    pool = WorkerPool(lambda: CircuitBreaker(args.cb_failure_threshold, args.cb_cooldown_secs))
    roles = ("prefill", "decode") if args.pd_disaggregation else ("regular",)
    for spec in args.prefill:
        pool.add(spec.url, "prefill", spec.bootstrap_port)
    for spec in args.decode:
        pool.add(spec.url, "decode")
    for url in args.worker_urls:
        pool.add(url, "regular")
    rng = random.Random()
    policies = {
        "prefill": make_policy(args.prefill_policy or args.policy, rng),
        "decode": make_policy(args.decode_policy or args.policy, rng),
        "regular": make_policy(args.policy, rng),
    }
    metrics = RouterMetrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        client = httpx.AsyncClient(limits=limits, trust_env=False)
        checker = HealthChecker(
            pool, client, args.health_check_interval_secs, args.health_check_timeout_secs
        )
        state["checker"] = checker
        state["proxy"] = Proxy(
            pool, policies, client, metrics, checker, args.pd_disaggregation, args.max_retries, rng
        )
        checker.start()
        yield
        await checker.stop()
        await client.aclose()

    app = FastAPI(title="pdcore router", lifespan=lifespan)

    async def generation(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            return error(400, f"request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return error(400, f"request body must be a JSON object, got {type(body).__name__}")
        return await state["proxy"].route(request, request.url.path, body)

    for path in GENERATION_PATHS:
        app.add_api_route(path, generation, methods=["POST"])

    async def from_one(path: str) -> Response:
        """GET ``path`` from a healthy decode (or regular) worker, as it answers."""
        workers = pool.available(roles[-1])
        if not workers:
            return error(503, f"no healthy {roles[-1]} worker available")
        try:
            r = await state["proxy"].client.get(workers[0].url + path, timeout=30)
        except httpx.HTTPError as e:
            return error(502, f"{workers[0].url}{path} failed: {type(e).__name__}: {e}")
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    @app.get("/v1/models")
    async def models():
        return await from_one("/v1/models")

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def model_info():
        return await from_one("/get_model_info")

    @app.api_route("/health", methods=["GET", "POST"])
    async def health():
        return Response(status_code=200)

    @app.api_route("/health_generate", methods=["GET", "POST"])
    async def health_generate():
        """Every role must have a worker that passes its own ``/health_generate``."""
        picks = []
        for role in roles:
            workers = pool.available(role)
            if not workers:
                return error(503, f"no healthy {role} worker available")
            picks.append(workers[0])
        client = state["proxy"].client
        results = await asyncio.gather(
            *(client.get(w.url + "/health_generate", timeout=30) for w in picks),
            return_exceptions=True,
        )
        for w, r in zip(picks, results, strict=True):
            if isinstance(r, Exception) or r.status_code != 200:
                why = r if isinstance(r, Exception) else f"status {r.status_code}"
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
                "max_retries": args.max_retries,
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
    async def add_worker(url: str, role: str | None = None, bootstrap_port: int | None = None):
        role = role or roles[-1]
        if role not in roles:
            return error(400, f"role must be one of {', '.join(roles)} in this mode, got {role!r}")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return error(400, f"url must be http(s)://HOST:PORT, got {url!r}")
        try:
            worker = pool.add(url, role, bootstrap_port)
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

    return app
