"""A 1P1D cluster for chaos tests: every hop but the data plane through a fault proxy.

    client -> router -> [proxy "prefill"]   -> prefill HTTP
                     -> [proxy "decode"]    -> decode HTTP
    decode's KV manager -> [proxy "bootstrap"] -> prefill's bootstrap server

The router knows the workers by their proxies' addresses (``--prefill URL PORT``
with the bootstrap proxy's port), so it hands that port to decode in every request
and decode's handshakes, transfer requests, aborts and heartbeats cross the
bootstrap proxy. Mooncake's writes and prefill's chunk notices go straight to decode.

Each process can be killed (``SIGKILL`` to it and its engine), stopped and continued
(``SIGSTOP``/``SIGCONT``), and restarted on the same ports.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from chaos.fault_proxy import FaultProxy
from e2e.pd_helpers import COMMON, descendants
from e2e.server_process import ServerProcess, free_port
from router.router_process import RouterProcess

# PD timeouts of a few seconds, so a room whose peer is gone fails quickly.
PD_ENV = {
    "PDCORE_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "6",
    "PDCORE_DISAGGREGATION_WAITING_TIMEOUT": "8",
    "PDCORE_DISAGGREGATION_HEARTBEAT_INTERVAL": "1",
    "PDCORE_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
    # Pages of rooms a silent prefill may still write: held until it answers again
    # (a pause ends, a restart is up) or this long, well above any injected outage.
    "PDCORE_DISAGGREGATION_QUARANTINE_TIMEOUT": "30",
}
# Decode's KV pool: 48 pages of 16 tokens. A few long prompts with their outputs do
# not fit at once, so decode waits for pages and retracts running requests.
DECODE_TOKENS = 768
ROUTER_FLAGS = (
    "--health-check-interval-secs", "0.5", "--health-check-timeout-secs", "1",
    "--cb-failure-threshold", "3", "--cb-timeout-duration-secs", "1", "--max-retries", "2",
)  # fmt: skip


def _pids(proc) -> list[int]:
    return [proc.pid, *descendants(proc.pid)]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class ChaosCluster:
    def __init__(self, model: str, seed: int = 0):
        self.model = model
        self.p_port, self.d_port, self.boot_port = free_port(), free_port(), free_port()
        self.router_port = free_port()
        self.prefill: ServerProcess | None = None
        self.decode: ServerProcess | None = None
        self.router: RouterProcess | None = None
        self.retired: list[ServerProcess] = []  # killed servers (their logs)
        self.routers: list[RouterProcess] = []  # every router started (their logs)
        self.proxies = {
            "prefill": FaultProxy(self.p_port, "prefill", seed=seed + 1),
            "decode": FaultProxy(self.d_port, "decode", seed=seed + 2),
            "bootstrap": FaultProxy(self.boot_port, "bootstrap", seed=seed + 3),
        }
        try:
            with ThreadPoolExecutor(2) as pool:
                p = pool.submit(self.start_prefill)
                d = pool.submit(self.start_decode)
                p.result()
                d.result()
            self.start_router()
        except BaseException:
            self.close()
            raise

    # ---- processes --------------------------------------------------------------

    def start_prefill(self) -> ServerProcess:
        self.prefill = ServerProcess(
            "--model-path", self.model, "--disaggregation-mode", "prefill",
            "--disaggregation-bootstrap-port", str(self.boot_port),
            "--disaggregation-transfer-backend", "mooncake", *COMMON,
            port=self.p_port, env=PD_ENV,
        )  # fmt: skip
        return self.prefill

    def start_decode(self) -> ServerProcess:
        self.decode = ServerProcess(
            "--model-path", self.model, "--disaggregation-mode", "decode",
            "--disaggregation-transfer-backend", "mooncake", *COMMON,
            "--max-total-tokens", str(DECODE_TOKENS),
            "--log-level", "debug",  # the scheduler logs each retraction at debug level
            port=self.d_port, env=PD_ENV,
        )  # fmt: skip
        return self.decode

    def start_router(self) -> RouterProcess:
        p, d, boot = self.proxies["prefill"], self.proxies["decode"], self.proxies["bootstrap"]
        self.router = RouterProcess(
            "--pd-disaggregation", "--prefill", p.url, str(boot.port), "--decode", d.url,
            *ROUTER_FLAGS, port=self.router_port,
        )  # fmt: skip
        self.routers.append(self.router)
        return self.router

    def servers(self) -> list[ServerProcess]:
        return [s for s in (self.prefill, self.decode) if s is not None]

    def kill9(self, role: str) -> None:
        """SIGKILL a process (and its engine) at once; it stays down until restarted."""
        proc = self._proc(role)
        pids = _pids(proc.proc)
        _signal(pids, signal.SIGKILL)
        proc.proc.wait(10)
        if role != "router":
            self.retired.append(proc)

    def restart(self, role: str) -> None:
        {"prefill": self.start_prefill, "decode": self.start_decode, "router": self.start_router}[
            role
        ]()

    def pause(self, role: str, seconds: float) -> None:
        """SIGSTOP a process and its engine for ``seconds``, then SIGCONT."""
        pids = _pids(self._proc(role).proc)
        _signal(pids, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            _signal(pids, signal.SIGCONT)

    def _proc(self, role: str):
        return {"prefill": self.prefill, "decode": self.decode, "router": self.router}[role]

    # ---- checks -----------------------------------------------------------------

    def disarm(self) -> int:
        return sum(p.disarm() for p in self.proxies.values())

    def retractions(self) -> int:
        """Retractions logged by every decode process so far (killed ones included)."""
        total = 0
        for server in [*self.retired, self.decode]:
            if server is not None:
                total += server.log_path.read_bytes().count(b"retracted ")
        return total

    def router_tracebacks(self, lines: int = 25) -> list[str]:
        """The lines after each traceback in every router's log so far."""
        out = []
        for router in self.routers:
            log = list(router.log)
            for i, line in enumerate(log):
                if line.startswith("Traceback"):
                    out.extend(x.rstrip() for x in log[i : i + lines])
        return out

    def close(self) -> None:
        for proc in (self.router, self.decode, self.prefill):
            if proc is not None:
                try:
                    proc.stop()
                except Exception as e:  # keep closing the rest
                    print(f"stopping {proc}: {e!r}")
        for proxy in self.proxies.values():
            proxy.close()
