"""A real ``python -m pdcore.launch_router`` process on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
from e2e.server_process import free_port


class RouterProcess:
    def __init__(self, *args: str, timeout: float = 30.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdcore.launch_router", *self.address(), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        self.ready_line = self._wait_ready(timeout)
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def address(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.port)]

    def _drain(self) -> None:
        """Keep reading stderr so the router never blocks on a full pipe."""
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_ready(self, timeout: float) -> str:
        """The router's startup line: "router ready on URL", or "router listening on URL;
        not ready yet: ..." when no worker of a role answered its first health check."""
        deadline = time.monotonic() + timeout
        line = self.proc.stderr.readline()
        while "router ready on" not in line and "router listening on" not in line:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"router did not start: {line}{self.proc.stderr.read()}")
            line = self.proc.stderr.readline()
        return line.strip()

    def get(self, path: str, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw):
        return httpx.post(self.url + path, json=json, timeout=120, **kw)

    def workers(self) -> dict[str, dict]:
        return {w["url"]: w for w in self.get("/list_workers").json()["workers"]}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
