"""A real ``python -m pdcore.launch_router`` process on 127.0.0.1 for tests, started by
the one launcher (``pdcore.up.launch``); its output goes to a log file."""

from __future__ import annotations

import os
import time

import httpx

from pdcore.up.health import POLL_S
from pdcore.up.launch import StartFailed, start_router

READY = "router ready on"
LISTENING = "router listening on"


class RouterProcess:
    def __init__(self, *args: str, timeout: float = 30.0, port: int | None = None):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.launched = start_router(*args, port=port, env=env)
        try:
            self.ready_line = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> str:
        """The router's startup line: "router ready on URL", or "router listening on URL;
        not ready yet: ..." when no worker of a role answered its first health check."""
        deadline = time.monotonic() + timeout
        while True:
            self.launched.check()  # raises with the log's tail if the router exited
            lines = self.launched.output().splitlines()
            ready = [x for x in lines if READY in x or LISTENING in x]
            if ready:
                return ready[0].strip()
            if time.monotonic() > deadline:
                raise StartFailed(f"router did not start in {timeout}s: {self.launched.tail()}")
            time.sleep(POLL_S / 3)

    @property
    def port(self) -> int:
        return self.launched.port

    @property
    def url(self) -> str:
        return self.launched.url

    @property
    def proc(self):
        return self.launched.popen

    @property
    def log(self) -> list[str]:
        """The router's output lines so far."""
        return self.launched.output().splitlines(keepends=True)

    def get(self, path: str, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw):
        return httpx.post(self.url + path, json=json, timeout=120, **kw)

    def workers(self) -> dict[str, dict]:
        return {w["url"]: w for w in self.get("/list_workers").json()["workers"]}

    def stop(self) -> int:
        return self.launched.stop(grace=15)
