"""Start pdcore processes (servers, routers, any command) and know when they are up.

The one launcher behind ``pdcore up``, the tests' process helpers and the benchmarks:

    with Cluster() as c:                       # stops all in reverse order, keeps logs
        p = c.server("--model-path", m, role="prefill", gpu=0)
        d = c.server("--model-path", m, role="decode", gpu=1)
        r = c.router("--pd-disaggregation", "--prefill", p.url, str(p.bootstrap_port),
                     "--decode", d.url)
        c.wait_healthy(300)

Every process runs in its own process group (``Proc.stop`` stops its engine and
helpers too) with its output in a log file (``Proc.log_path``, ``Proc.tail()``).
Ports the caller leaves out come from ``pdcore.up.ports`` and stay reserved until
the process is stopped; if the process still fails because its address was in use,
it is started again on fresh ports, up to ``attempts`` times in all.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from pdcore.up import health, ports
from pdcore.up.procs import Child, stop_groups

ATTEMPTS = 3
DEFAULT_GRACE = 15.0


class StartFailed(RuntimeError):
    """A process exited or timed out before it was ready; the message says which and why."""


class Proc:
    """One started process: its ports, log and process group.

    ``build(ports)`` gives the command line for the ports wanted (``None`` entries are
    picked here); ``health_path`` is polled on the first port for readiness.
    ``die_with_parent`` (default: when started from the main thread) has the kernel
    SIGTERM the process when the starting thread ends, so a launcher killed with
    ``kill -9`` leaves nothing behind.
    """

    def __init__(
        self,
        name: str,
        build: Callable[[list[int]], list[str]],
        *,
        want_ports: Sequence[int | None] = (None,),
        log_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
        health_path: str = "/health",
        die_with_parent: bool | None = None,
        attempts: int = ATTEMPTS,
        reserve: Callable[[], ports.Reservation] = ports.reserve,
    ):
        self.name = name
        self._build = build
        self._want = list(want_ports)
        self._env = dict(os.environ if env is None else env)
        self.health_path = health_path
        if die_with_parent is None:  # the kernel ties it to the starting thread's life
            die_with_parent = threading.current_thread() is threading.main_thread()
        self._die_with_parent = die_with_parent
        self._attempts_left = attempts
        self._reserve = reserve
        self._reservations: list[ports.Reservation] = []
        folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pdcore-proc-"))
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{name}.log"
        self.attempts = 0
        self._http = httpx.Client(trust_env=False, timeout=2.0)
        self.child: Child | None = None
        self._spawn(fresh=True)

    # -- what it is ----------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        return self.child.cmd

    @property
    def popen(self):
        return self.child.proc

    @property
    def pid(self) -> int:
        return self.child.pid

    def exited(self) -> int | None:
        """The exit code once the process is gone, else None."""
        return self.child.exited()

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log (this and earlier starts of the process)."""
        return "\n".join(self.child.tail(lines))

    def output(self) -> str:
        """Everything the current start of the process has written."""
        return self.child.output()

    def last_note(self) -> str:
        return self.child.last_note()

    # -- starting ------------------------------------------------------------------------

    def _spawn(self, fresh: bool) -> None:
        if fresh:
            self._release()
            self._ports = []
            for want in self._want:
                if want is None:
                    reservation = self._reserve()
                    self._reservations.append(reservation)
                    want = reservation.port
                self._ports.append(want)
        if self.child is not None:
            self.child.close()
        self.attempts += 1
        self._attempts_left -= 1
        self.child = Child(
            self.name, self._build(self.ports), self.log_path, self._env, self._die_with_parent
        )

    def restart(self) -> None:
        """Start the command again on the same ports (after it was stopped or killed)."""
        self.child.signal_group(signal.SIGKILL)
        self.child.proc.wait(10)
        self._attempts_left = max(self._attempts_left, 1)
        self._spawn(fresh=False)

    def healthy(self) -> bool:
        return health.responds(self._http, self.url + self.health_path)

    def check(self) -> bool:
        """One poll: True once ready; a start that lost its port to someone else is
        redone on fresh ports; any other exit raises ``StartFailed``."""
        code = self.exited()
        if code is None:
            return self.healthy()
        picked = any(w is None for w in self._want)
        if picked and self._attempts_left > 0 and health.address_in_use(self.output()):
            note = f"\n[pdcore.up: {self.name}: address in use; starting again on fresh ports]\n"
            with open(self.log_path, "a") as log:
                log.write(note)
            self._spawn(fresh=True)
            return False
        raise StartFailed(
            f"{self.name} exited with code {code}; its last lines ({self.log_path}):\n"
            + ("\n".join(f"    {x}" for x in self.child.tail(20)) or "    (no output)")
        )

    def wait_healthy(self, timeout: float = 240.0) -> Proc:
        deadline = time.monotonic() + timeout
        while not self.check():
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{self.name} not ready after {timeout:.0f}s; its last lines "
                    f"({self.log_path}):\n{self.tail(20)}"
                )
            time.sleep(health.POLL_S)
        return self

    # -- stopping ------------------------------------------------------------------------

    def stop(self, grace: float = DEFAULT_GRACE) -> int | None:
        """SIGTERM the process (a server then stops its engines itself), SIGKILL what is
        left of its process group once it exits or after ``grace`` s; its exit code."""
        stop_groups([self.child], grace, whole_group=False)
        self._release()
        self._http.close()
        return self.exited()

    def _release(self) -> None:
        for r in self._reservations:
            r.release()
        self._reservations = []

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, {self.url}, pid {self.child.pid})"


def stop_all(procs: Sequence[Proc], grace: float = DEFAULT_GRACE, hurry=lambda: False) -> None:
    """Stop several at once: SIGTERM every group, then wait for all (one grace period)."""
    stop_groups([p.child for p in procs], grace, hurry)
    for p in procs:
        p._release()
        p._http.close()


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def needs_bootstrap_port(role: str | None, args: Sequence[str]) -> bool:
    """A prefill server needs a bootstrap port, unless its flags already name one."""
    return role == "prefill" and "--disaggregation-bootstrap-port" not in args


def server_command(
    port: int,
    *args: str,
    role: str | None = None,
    gpu: int | None = None,
    bootstrap_port: int | None = None,
) -> list[str]:
    """The server's command line: address, role, bootstrap port, GPU, then ``args``."""
    cmd = [*_python("pdcore.launch_server"), "--host", "127.0.0.1", "--port", str(port)]
    if role is not None:
        cmd += ["--disaggregation-mode", role]
    if bootstrap_port is not None:
        cmd += ["--disaggregation-bootstrap-port", str(bootstrap_port)]
    if gpu is not None:
        cmd += ["--base-gpu-id", str(gpu)]
    return [*cmd, *args]


def start_server(
    *args: str,
    role: str | None = None,
    gpu: int | None = None,
    port: int | None = None,
    bootstrap_port: int | None = None,
    name: str | None = None,
    **kw,
) -> Proc:
    """``python -m pdcore.launch_server`` on 127.0.0.1; ``args`` come last (they win).

    ``role`` prefill/decode adds ``--disaggregation-mode`` (and a prefill's bootstrap
    port); ``gpu`` adds ``--base-gpu-id``; ``kw`` goes to ``Proc``.
    """
    bootstrap = needs_bootstrap_port(role, args)

    def build(got: list[int]) -> list[str]:
        boot = got[1] if bootstrap else None
        return server_command(got[0], *args, role=role, gpu=gpu, bootstrap_port=boot)

    want = [port, bootstrap_port] if bootstrap else [port]
    proc = Proc(name or role or "server", build, want_ports=want, **kw)
    proc.bootstrap_port = proc.ports[1] if bootstrap else None
    return proc


def start_router(
    *args: str, port: int | None = None, host: str = "127.0.0.1", name: str = "router", **kw
) -> Proc:
    """``python -m pdcore.launch_router`` on ``host`` (127.0.0.1); ``args`` come last."""

    def build(got: list[int]) -> list[str]:
        return [*_python("pdcore.launch_router"), "--host", host, "--port", str(got[0]), *args]

    return Proc(name, build, want_ports=[port], **kw)


class Cluster:
    """Processes started together and stopped together, in reverse order; their logs
    stay in ``log_dir`` after the stop."""

    def __init__(self, log_dir: str | Path | None = None, grace: float = DEFAULT_GRACE):
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="pdcore-up-"))
        self.grace = grace
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def server(self, *args: str, **kw) -> Proc:
        kw.setdefault("name", f"{kw.get('role') or 'server'}-{len(self.procs)}")
        return self.add(start_server(*args, log_dir=self.log_dir, **kw))

    def router(self, *args: str, **kw) -> Proc:
        return self.add(start_router(*args, log_dir=self.log_dir, **kw))

    def wait_healthy(self, timeout: float = 240.0) -> None:
        """Until every process is ready (polled together, so start-ups overlap)."""
        deadline = time.monotonic() + timeout
        pending = list(self.procs)
        while pending:
            pending = [p for p in pending if not p.check()]
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise StartFailed(f"{names} not ready after {timeout:.0f}s; logs in {self.log_dir}")
            if pending:
                time.sleep(health.POLL_S)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(self.grace)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
