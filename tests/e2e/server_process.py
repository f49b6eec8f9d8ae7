"""A real ``python -m pdcore.launch_server`` process on 127.0.0.1 for end-to-end tests,
started by the one launcher (``pdcore.up.launch``): its own process group, output in a
log file (never an unread pipe a chatty server would block on), a reserved port."""

from __future__ import annotations

import os

import httpx

from pdcore.up.launch import start_server
from pdcore.up.ports import pick_port

# the tests' names for the launcher's port reservations
free_port = pick_port


def free_port_run(n: int) -> int:
    """A port P with P .. P+n-1 all reserved (a multi-node server's rendezvous port and
    the front end's engine sockets after it)."""
    return pick_port(n)


class ServerProcess:
    """One server. ``wait=False`` returns at once: start several, then ``wait_healthy()``
    each, so their start-ups overlap; a failing test can show ``log_tail()``."""

    def __init__(
        self,
        *args: str,
        timeout: float = 240.0,
        env: dict | None = None,
        wait: bool = True,
        port: int | None = None,
    ):
        self.timeout = timeout
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
        self.launched = start_server("--log-level", "warning", *args, port=port, env=env)
        if wait:
            self.wait_healthy()

    @property
    def port(self) -> int:
        return self.launched.port

    @property
    def url(self) -> str:
        return self.launched.url

    @property
    def proc(self):
        """The server's ``subprocess.Popen`` (its engine runs in the same process group)."""
        return self.launched.popen

    @property
    def log_path(self):
        return self.launched.log_path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output so far."""
        return self.launched.output()[-chars:]

    def wait_healthy(self, timeout: float | None = None) -> None:
        try:
            self.launched.wait_healthy(timeout or self.timeout)
        except Exception:
            self.stop()
            raise

    def get(self, path: str, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw):
        return httpx.post(self.url + path, json=json, timeout=120, **kw)

    def kv_pages(self) -> dict:
        return self.get("/get_server_info").json()["kv_cache"]

    def stop(self) -> int:
        return self.launched.stop(grace=30)
