"""The real front end (app + TokenizerManager) wired to the fake engine and tokenizer.

``Stack`` serves through httpx's ASGI transport (fast, in-loop); ``LiveServer``
runs the same app under a real uvicorn on 127.0.0.1 (ephemeral port) in a thread,
for SSE over the network and client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from server.fake_backend import ByteTokenizer, FakeEngine

from pdcore.config import ServerArgs
from pdcore.server.http_server import create_app
from pdcore.server.tokenizer_manager import TokenizerManager
from pdcore.up.ports import pick_port

free_port = pick_port  # the tests' name for the launcher's port reservations

MODEL_PATH = "/models/Fake-Model-1B"
CONTEXT = 256
TESTS = Path(__file__).resolve().parents[1]


class Stack:
    def __init__(self, step_s: float = 0.002, tokenizer=None, **args):
        """``tokenizer``: instead of the byte tokenizer; ``args``: ``ServerArgs`` fields."""
        self.dir = tempfile.mkdtemp(prefix="pdct-")  # short: ipc paths max ~107 chars
        in_addr, out_addr = f"ipc://{self.dir}/in", f"ipc://{self.dir}/out"
        self.engine = FakeEngine(in_addr, out_addr, step_s=step_s)
        self.tm = TokenizerManager(
            tokenizer or ByteTokenizer(),
            in_addr,
            out_addr,
            context_length=CONTEXT,
            server_args=ServerArgs(**{"model_path": MODEL_PATH, **args}),
            engine_alive=lambda: self.engine.alive,
            health_poll_s=0.05,
            request_timeout_s=2.0,
        )
        self.app = create_app(self.tm)

    def close(self) -> None:
        self.engine.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@asynccontextmanager
async def asgi_stack(**kwargs):
    stack = Stack(**kwargs)
    stack.engine.start()
    try:
        async with stack.app.router.lifespan_context(stack.app):
            transport = httpx.ASGITransport(app=stack.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", timeout=10
            ) as client:
                stack.client = client
                yield stack
    finally:
        stack.close()


class LiveServer:
    """``Stack`` behind a real uvicorn on an ephemeral port, served from a thread."""

    def __init__(self, **kwargs):
        self.stack = Stack(**kwargs)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.stack.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> LiveServer:
        self.stack.engine.start()
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        self.stack.close()


def sse_events(text: str) -> list:
    """Parse an SSE body: each ``data:`` payload (JSON, or the string "[DONE]")."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), f"bad SSE frame: {block!r}"
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def run_script(code: str, env: dict | None = None) -> subprocess.Popen:
    """``python -c code`` with ``tests/`` importable (for spawned children too)."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)


# A real front end and engine process on the tiny model; format with ``port=``.
TINY_SERVER_SCRIPT = """
import functools, sys
from server.fake_backend import ByteTokenizer
from pdcore.config import ServerArgs
from pdcore.engine.engine_process import run_engine
from pdcore.server.launch import serve
args = ServerArgs(model_path="/models/tiny", port={port}, log_level="warning", device="cpu",
                  max_total_tokens=1024, page_size=4, chunked_prefill_size=64)
engine = functools.partial(run_engine, model_factory="engine.tiny_model:load_tiny")
tokenizer = ByteTokenizer(vocab_size=128, bos=2, eos=1)
sys.exit(serve(args, server_info={{"device": "cpu"}}, engine_target=engine, tokenizer=tokenizer))
"""
