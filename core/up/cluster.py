"""``pdcore up``: start the servers, then the router; report progress; stop everything
on any exit path; the logs stay where it said they are."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pdcore.up import health
from pdcore.up.args import SERVER_DEFAULTS, UpArgs, parse_up_args
from pdcore.up.launch import Proc, StartFailed, start_router, start_server, stop_all
from pdcore.up.plan import ServerPlan, device_has_gpus, plan_servers

PROGRESS_EVERY_S = 5.0


class _Stop(Exception):
    """SIGINT or SIGTERM asked ``pdcore up`` to stop."""


@dataclass
class Server:
    plan: ServerPlan
    proc: Proc | None = None
    ready_after: float | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def role(self) -> str:
        return self.plan.role


def run(argv: list[str], prog: str = "pdcore up") -> int:
    args = parse_up_args(argv, prog)
    return Up(args).run()


def server_plan(args: UpArgs) -> list[ServerPlan]:
    """The servers to start, with GPUs when their ``--device`` has them."""
    return plan_servers(
        args.num_prefill,
        args.num_decode,
        gpus=device_has_gpus(args.server_flag("--device") or "auto"),
        tp_size=int(args.server_flag("--tp-size", "--tp") or 1),
        gpu_id_step=int(args.server_flag("--gpu-id-step") or 1),
        base_gpu_id=args.base_gpu_id,
        prefill_base_gpu_id=args.prefill_base_gpu_id,
        decode_base_gpu_id=args.decode_base_gpu_id,
    )


class Up:
    def __init__(self, args: UpArgs):
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="pdcore-up-"))
        self.servers = [Server(p) for p in server_plan(args)]
        self.router: Proc | None = None
        self.router_url = ""
        auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
        self.http = httpx.Client(trust_env=False, timeout=2.0, headers=auth)
        self.stop_requests = 0
        self.first_signal = 0
        self.critical = False
        self.ready = False

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
                s.proc = start_server(
                    *self._server_args(),
                    role=s.role,
                    gpu=s.plan.base_gpu_id,
                    name=s.name,
                    log_dir=self.log_dir,
                    env=env,
                    die_with_parent=True,
                )
        self._wait_servers(start)
        with self._uninterrupted():
            self.router = start_router(
                *self._router_args(
                    [(s.role, s.proc.url, s.proc.bootstrap_port) for s in self.servers]
                ),
                host=self.args.host,
                port=self.args.port,
                log_dir=self.log_dir,
                env=env,
                die_with_parent=True,
            )
        self.router_url = f"http://{_display_host(self.args.host)}:{self.router.port}"
        self._wait_router(start)
        self.ready = True
        self.started_in = time.monotonic() - start

    def _server_args(self) -> list[str]:
        """Every server's flags after its address, role and GPU (the user's come last)."""
        a = self.args
        cmd = ["--disaggregation-transfer-backend", a.transfer_backend]
        if a.model_path:
            cmd += ["--model-path", a.model_path]
        if a.api_key:
            cmd += ["--api-key", a.api_key]
        return [*cmd, *SERVER_DEFAULTS, *a.server_args]

    def _router_args(self, workers: list[tuple[str, str, int | None]]) -> list[str]:
        """The router's flags after its address: the servers' ``(role, url, bootstrap
        port)`` as they came up."""
        cmd = ["--pd-disaggregation"]
        for role, url, bootstrap_port in workers:
            if role == "prefill":
                cmd += ["--prefill", url, str(bootstrap_port)]
            else:
                cmd += ["--decode", url]
        cmd += ["--log-level", "warning"]
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
                with self._uninterrupted():  # check() may start it again on fresh ports
                    ready = s.proc.check()
                if ready:
                    s.ready_after = time.monotonic() - start
                    boot = s.proc.bootstrap_port
                    where = f"{s.proc.url}" + (f" bootstrap {boot}" if boot else "")
                    if s.plan.base_gpu_id is not None:
                        where += f" gpu {s.plan.base_gpu_id}"
                    _err(f"  {s.name:<10} ready  {s.ready_after:5.1f}s  {where}")
            now = time.monotonic()
            self._check_timeout(start, "servers")
            if now >= next_note and any(s.ready_after is None for s in self.servers):
                next_note = now + PROGRESS_EVERY_S
                _err(f"  loading {now - start:4.0f}s: {_waiting(self.servers)}")
            time.sleep(health.POLL_S)

    def _wait_router(self, start: float) -> None:
        while True:
            for s in self.servers:
                self._check_alive(s.proc)
            with self._uninterrupted():  # check() may start it again on fresh ports
                up = self.router.check()
            if up and health.workers_healthy(self.http, self.router_url):
                workers = health.router_workers(self.http, self.router_url)
                _err(
                    f"  {'router':<10} ready  {time.monotonic() - start:5.1f}s  "
                    f"{self.router_url} ({len(workers)} workers healthy)"
                )
                return
            self._check_timeout(start, "the router")
            time.sleep(health.POLL_S)

    def _check_alive(self, proc: Proc) -> None:
        code = proc.exited()
        if code is not None:
            tail = (
                "\n".join(f"    {line}" for line in proc.tail(20).splitlines()) or "    (no output)"
            )
            raise StartFailed(
                f"{proc.name} exited with code {code}; its last lines ({proc.log_path}):\n{tail}"
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
            for proc in [self.router, *(s.proc for s in self.servers)]:
                code = proc.exited()
                if code is not None:
                    tail = "\n".join(f"    {x}" for x in proc.tail(20).splitlines())
                    _err(
                        f"error: {proc.name} exited with code {code}; stopping the "
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
        started = [s.proc for s in self.servers if s.proc is not None]
        if self.router is not None or started:
            _err("stopping the router and servers ...")
        hurry = lambda: self.stop_requests > 1  # noqa: E731
        if self.router is not None:
            stop_all([self.router], self.args.grace, hurry)
        stop_all(started, self.args.grace, hurry)
        self.http.close()
        _err(f"stopped; logs kept in {self.log_dir}")


def _waiting(servers: list[Server]) -> str:
    """``prefill-0, decode-0 (note)``: one note when all say the same, else one each."""
    pending = [s for s in servers if s.ready_after is None]
    notes = [s.proc.last_note() or "starting" for s in pending]
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
