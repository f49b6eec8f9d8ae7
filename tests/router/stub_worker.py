"""A scripted worker in a thread: health that can be switched off, /generate on a hook."""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from e2e.server_process import free_port
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


class StubWorker:
    """``on_generate(body) -> (status, json)`` runs in a worker thread per request."""

    def __init__(self, on_generate, bootstrap_port: int = 8998):
        self.healthy = True
        self.bodies: list[dict] = []
        self.aborts: list[dict] = []
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization) of every call
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = FastAPI()

        @app.middleware("http")
        async def record_auth(request: Request, call_next):
            self.auth.append((request.url.path, request.headers.get("authorization")))
            return await call_next(request)

        @app.get("/health")
        async def health():
            return Response(status_code=200 if self.healthy else 503)

        @app.get("/get_server_info")
        async def info():
            return {"disaggregation_bootstrap_port": bootstrap_port, "engine": {}}

        @app.post("/abort_request")
        async def abort(request: Request):
            self.aborts.append(await request.json())
            return {"aborted": 0}

        @app.post("/generate")
        async def generate(request: Request):
            body = await request.json()
            self.bodies.append(body)
            status, out = await asyncio.to_thread(on_generate, body)
            return JSONResponse(out, status_code=status)

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
