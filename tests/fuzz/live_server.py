"""A real server process (tiny random model, byte tokenizer) for the HTTP fuzz tests.

Like ``server.harness.TINY_SERVER_SCRIPT`` but with a short context (48 tokens),
so that any request the fuzzer gets through generates at most a few dozen
tokens, and run in its own temporary folder, so that profiler traces and
relative ``output_dir`` values land there. ``idle()`` is the leak check: no
request running or waiting, no KV page held by a request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from server.harness import free_port, wait_healthy

CONTEXT = 48
VOCAB = 128
TESTS = Path(__file__).resolve().parents[1]

SCRIPT = """
import functools, sys
from server.fake_backend import ByteTokenizer
from pdcore.config import ServerArgs
from pdcore.engine.engine_process import run_engine
from pdcore.server.launch import serve
args = ServerArgs(model_path="/models/tiny", port={port}, log_level="error", device="cpu",
                  max_total_tokens=1024, page_size=4, chunked_prefill_size=64,
                  context_length={context})
engine = functools.partial(run_engine, model_factory="engine.tiny_model:load_tiny")
tokenizer = ByteTokenizer(vocab_size={vocab}, bos=2, eos=1)
sys.exit(serve(args, server_info={{"device": "cpu"}}, engine_target=engine, tokenizer=tokenizer))
"""


class FuzzServer:
    """Start with ``FuzzServer()``; ``url``, ``get``/``post``, ``idle()``, ``stop()``."""

    def __init__(self, timeout: float = 120.0):
        self.dir = tempfile.mkdtemp(prefix="pdfuzz-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1",
            "PDCORE_TORCH_PROFILER_DIR": self.dir,
        }
        code = SCRIPT.format(port=port, context=CONTEXT, vocab=VOCAB)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=self.dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_healthy(self.proc, self.url, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)

    def load(self) -> dict:
        """Requests and KV pages held right now (``cached_pages`` are the prefix cache's)."""
        info = self.get("/get_server_info").json()
        engine, kv = info["engine"], info["kv_cache"]
        return {
            "running": engine["num_running_reqs"],
            "waiting": engine["num_waiting_reqs"],
            "used_pages": kv["used_pages"],
        }

    def idle(self, timeout: float = 10.0) -> dict:
        """The load once it is all zero, or as it stands after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (load := self.load()) != {"running": 0, "waiting": 0, "used_pages": 0}:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return load

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> tuple[int | None, str]:
        """SIGTERM, then the exit code and stderr (killed after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
        return self.proc.returncode, stderr
