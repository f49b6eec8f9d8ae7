"""SGLang's own router (``pip install sglang-router``) as a process on 127.0.0.1.

Its output goes to a temporary file (never an unread pipe); ``log_tail()`` shows
it in a failure. It registers workers in the background, so ``wait_workers``
polls its ``/workers`` until every one is healthy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import httpx
from e2e.server_process import free_port


class SglangRouterProcess:
    def __init__(self, *args: str, workers: int, timeout: float = 60.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tempfile.TemporaryFile("w+", prefix="sglang-router-")
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        # its metrics port defaults to 29000: a fixed port would clash between runs
        metrics = ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
        # its defaults wait 30 s between worker checks and drain 180 s on SIGTERM
        quick = ["--worker-startup-check-interval", "1", "--shutdown-grace-period-secs", "1"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sglang_router.launch_router",
                *address,
                *metrics,
                *quick,
                *args,
            ],
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, NO_COLOR="1"),
        )
        try:
            self.wait_workers(workers, timeout)
        except BaseException:
            self.stop()
            raise

    def wait_workers(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sglang router exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                workers = httpx.get(f"{self.url}/workers", timeout=2).json()["workers"]
                if len(workers) == count and all(w["is_healthy"] for w in workers):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise RuntimeError(
            f"sglang router: {count} healthy workers not within {timeout}s\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        self.output.flush()
        self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, self.output.tell() - chars))
        return self.output.read()

    def get(self, path: str, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw):
        return httpx.post(self.url + path, json=json, timeout=120, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.output.close()
        return self.proc.returncode
