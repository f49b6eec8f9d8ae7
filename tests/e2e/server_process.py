"""A real ``python -m pdcore.launch_server`` process on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """A port P with P .. P+n-1 all free on 127.0.0.1 (a multi-node server's
    rendezvous port and the front end's engine sockets after it)."""
    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


class ServerProcess:
    """One server. Its stderr goes to a temporary file, never an unread pipe (a chatty
    server would block on a full pipe), so a failing test can show ``log_tail()``.
    ``wait=False`` returns at once: start several, then ``wait_healthy()`` each, so
    their start-ups overlap."""

    def __init__(
        self,
        *args: str,
        timeout: float = 240.0,
        env: dict | None = None,
        wait: bool = True,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
        self.log = open(os.devnull, "w")
        self.stderr = tempfile.TemporaryFile("w+", prefix="pdcore-server-")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pdcore.launch_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *args,
            ],
            stdout=self.log,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        if wait:
            self.wait_healthy()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr so far."""
        self.stderr.flush()
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - chars))
        return self.stderr.read()

    def wait_healthy(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        waited = timeout or self.timeout
        raise RuntimeError(f"server not healthy after {waited}s: {self.log_tail()}")

    def get(self, path: str, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw):
        return httpx.post(self.url + path, json=json, timeout=120, **kw)

    def kv_pages(self) -> dict:
        return self.get("/get_server_info").json()["kv_cache"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode
