"""Start the servers, then the router; report progress; stop everything on any exit path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pdcore.up.args import SERVER_DEFAULTS, UpArgs, free_port, parse_up_args
from pdcore.up.procs import Child, stop_groups

POLL_S = 0.3
PROGRESS_EVERY_S = 5.0


class StartFailed(Exception):
    """A process exited or timed out before the cluster was ready; message says which."""


class _Stop(Exception):
    """SIGINT or SIGTERM asked ``pdcore up`` to stop."""


@dataclass
class Server:
    name: str
    role: str
    url: str
    bootstrap_port: int | None
    child: Child | None = None
    ready_after: float | None = None


def run(argv: list[str], prog: str = "pdcore up") -> int:
    args = parse_up_args(argv, prog)
    return Cluster(args).run()


class Cluster:
    def __init__(self, args: UpArgs):
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="pdcore-up-"))
        self.servers = self._plan()
        self.router: Child | None = None
        self.router_url = f"http://{_display_host(args.host)}:{args.port}"
        auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
        self.http = httpx.Client(trust_env=False, timeout=2.0, headers=auth)
        self.stop_requests = 0
        self.first_signal = 0
        self.critical = False
        self.ready = False

    def _plan(self) -> list[Server]:
        ports: set[int] = {self.args.port}

        def pick() -> int:
            while (port := free_port()) in ports:
                pass
            ports.add(port)
            return port

        plan = [
            Server(f"prefill-{i}", "prefill", f"http://127.0.0.1:{pick()}", pick())
            for i in range(self.args.num_prefill)
        ]
        plan += [
            Server(f"decode-{i}", "decode", f"http://127.0.0.1:{pick()}", None)
            for i in range(self.args.num_decode)
        ]
        return plan

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 1
        try:
            try:
                self._start()
                code = self._serve()
            finally:
                self.critical = True  # from here a signal only hurries the stop
        except _Stop:
            code = 0 if self.ready else 128 + self.first_signal
        except StartFailed as e:
            _err(f"error: {e}")
            code = 1
        finally:
            self._shutdown(code)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum, frame) -> None:
        self.stop_requests += 1
        self.first_signal = self.first_signal or signum
        if self.stop_requests == 1 and not self.critical:
            raise _Stop()
        # later (or during a spawn): noted; a second one makes stop_groups kill at once

    @contextmanager
    def _uninterrupted(self):
        """No _Stop inside (a half-spawned child would escape the shutdown); raise after."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.stop_requests:
            raise _Stop()

    # -- start -------------------------------------------------------------------------------

    def _start(self) -> None:
        a = self.args
        what = a.model_path or "the embedded SmolLM2-135M"
        _err(
            f"starting {a.num_prefill} prefill + {a.num_decode} decode servers ({what}, "
            f"{a.transfer_backend} transfer); logs in {self.log_dir}"
        )
        env = _child_env(len(self.servers))
        start = time.monotonic()
        for s in self.servers:
            with self._uninterrupted():
                s.child = Child(s.name, self._server_cmd(s), self.log_dir / f"{s.name}.log", env)
        self._wait_servers(start)
        with self._uninterrupted():
            self.router = Child("router", self._router_cmd(), self.log_dir / "router.log", env)
        self._wait_router(start)
        self.ready = True
        self.started_in = time.monotonic() - start

    def _server_cmd(self, s: Server) -> list[str]:
        a = self.args
        port = s.url.rsplit(":", 1)[1]
        cmd = [
            sys.executable,
            "-m",
            "pdcore.launch_server",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--disaggregation-mode",
            s.role,
            "--disaggregation-transfer-backend",
            a.transfer_backend,
        ]
        if s.bootstrap_port is not None:
            cmd += ["--disaggregation-bootstrap-port", str(s.bootstrap_port)]
        if a.model_path:
            cmd += ["--model-path", a.model_path]
        if a.api_key:
            cmd += ["--api-key", a.api_key]
        return [*cmd, *SERVER_DEFAULTS, *a.server_args]

    def _router_cmd(self) -> list[str]:
        cmd = [sys.executable, "-m", "pdcore.launch_router", "--pd-disaggregation"]
        for s in self.servers:
            if s.role == "prefill":
                cmd += ["--prefill", s.url, str(s.bootstrap_port)]
            else:
                cmd += ["--decode", s.url]
        cmd += ["--host", self.args.host, "--port", str(self.args.port), "--log-level", "warning"]
        if self.args.api_key:  # the router sends the same key to the servers
            cmd += ["--api-key", self.args.api_key]
        return [*cmd, *self.args.router_args]

    def _wait_servers(self, start: float) -> None:
        next_note = start + PROGRESS_EVERY_S
        while True:
            pending = [s for s in self.servers if s.ready_after is None]
            if not pending:
                return
            for s in pending:
                self._check_alive(s.child)
                if self._ok(f"{s.url}/health"):
                    s.ready_after = time.monotonic() - start
                    where = f"{s.url}" + (
                        f" bootstrap {s.bootstrap_port}" if s.bootstrap_port else ""
                    )
                    _err(f"  {s.name:<10} ready  {s.ready_after:5.1f}s  {where}")
            now = time.monotonic()
            self._check_timeout(start, "servers")
            if now >= next_note and any(s.ready_after is None for s in self.servers):
                next_note = now + PROGRESS_EVERY_S
                _err(f"  loading {now - start:4.0f}s: {_waiting(self.servers)}")
            time.sleep(POLL_S)

    def _wait_router(self, start: float) -> None:
        while True:
            self._check_alive(self.router)
            for s in self.servers:
                self._check_alive(s.child)
            if self._ok(f"{self.router_url}/health"):
                workers = self._router_workers()
                if workers and all(w.get("healthy") for w in workers):
                    _err(
                        f"  {'router':<10} ready  {time.monotonic() - start:5.1f}s  "
                        f"{self.router_url} ({len(workers)} workers healthy)"
                    )
                    return
            self._check_timeout(start, "the router")
            time.sleep(POLL_S)

    def _router_workers(self) -> list[dict]:
        try:
            r = self.http.get(f"{self.router_url}/list_workers")
            return list(r.json().get("workers", [])) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []

    def _ok(self, url: str) -> bool:
        try:
            return self.http.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _check_alive(self, child: Child) -> None:
        code = child.exited()
        if code is not None:
            tail = "\n".join(f"    {line}" for line in child.tail(20)) or "    (no output)"
            raise StartFailed(
                f"{child.name} exited with code {code}; its last lines ({child.log_path}):\n{tail}"
            )

    def _check_timeout(self, start: float, what: str) -> None:
        if time.monotonic() - start > self.args.timeout:
            raise StartFailed(
                f"{what} not ready after {self.args.timeout:.0f}s (--timeout); "
                f"logs in {self.log_dir}"
            )

    # -- serve -------------------------------------------------------------------------------

    def _serve(self) -> int:
        a = self.args
        _err(f"ready in {self.started_in:.1f}s")
        if a.once is not None:
            return self._ask(a.once)
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": a.max_tokens,
        }
        auth = " -H 'Authorization: Bearer <your --api-key>'" if a.api_key else ""  # not the key
        _out("try it:")
        _out(
            f"  curl {self.router_url}/v1/chat/completions -H 'Content-Type: application/json'"
            f"{auth} -d '{json.dumps(body)}'"
        )
        # the ready line comes last: a script waiting for it has everything above
        _out(
            f"pdcore up: ready; router on {self.router_url} ({a.num_prefill} prefill + "
            f"{a.num_decode} decode, {a.transfer_backend}); Ctrl-C stops everything"
        )
        while True:
            for child in [self.router, *(s.child for s in self.servers)]:
                code = child.exited()
                if code is not None:
                    tail = "\n".join(f"    {x}" for x in child.tail(20))
                    _err(
                        f"error: {child.name} exited with code {code}; stopping the "
                        f"cluster. Its last lines:\n{tail}"
                    )
                    return 1
            time.sleep(0.5)

    def _ask(self, question: str) -> int:
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": self.args.max_tokens,
            "temperature": 0,
        }
        _err(f"asking the router: {question}")
        try:
            r = self.http.post(f"{self.router_url}/v1/chat/completions", json=body, timeout=300)
        except httpx.HTTPError as e:
            _err(f"error: the chat request failed: {type(e).__name__}: {e}")
            return 1
        if r.status_code != 200:
            _err(f"error: the router answered {r.status_code}: {r.text[:2000]}")
            return 1
        answer = r.json()["choices"][0]["message"]["content"]
        _out(f"Q: {question}")
        _out(f"A: {answer.strip()}")
        return 0

    # -- stop --------------------------------------------------------------------------------

    def _shutdown(self, code: int) -> None:
        started = [s.child for s in self.servers if s.child is not None]
        if self.router is not None or started:
            _err("stopping the router and servers ...")
        hurry = lambda: self.stop_requests > 1  # noqa: E731
        if self.router is not None:
            stop_groups([self.router], self.args.grace, hurry)
        stop_groups(started, self.args.grace, hurry)
        self.http.close()
        if code == 0 or self.first_signal:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            _err("stopped")
        else:
            _err(f"stopped; logs kept in {self.log_dir}")


def _waiting(servers: list[Server]) -> str:
    """``prefill-0, decode-0 (note)``: one note when all say the same, else one each."""
    pending = [s for s in servers if s.ready_after is None]
    notes = [s.child.last_note() or "starting" for s in pending]
    if len(set(notes)) == 1:
        return f"{', '.join(s.name for s in pending)} ({notes[0]})"
    return ", ".join(f"{s.name} ({note})" for s, note in zip(pending, notes, strict=True))


def _child_env(n_servers: int) -> dict[str, str]:
    """Share the cores between the servers unless the user set OMP_NUM_THREADS."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_servers)))
    return env


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host


def _out(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(f"pdcore up: {line}", file=sys.stderr, flush=True)
