"""The remote side of the transfer conformance suite, run in a spawned process.

It builds an engine of the backend under test, registers a zeroed buffer, and
answers commands over a pipe so the test process can check what landed there.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing as mp
import os
import signal
import time

import numpy as np

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig, TransferEngine


def build_engine(backend_name: str, factory_path: str | None, options: dict, role: str):
    """The backend's engine: from ``module:attr`` if given, else from the registry."""
    config = TransferConfig(role=role, options=dict(options))
    if factory_path:
        module, _, attr = factory_path.partition(":")
        return getattr(importlib.import_module(module), attr)(config)
    from pdcore.registry import Registry

    return Registry.discover().get("transfer", backend_name).factory(config)


def peer_main(conn, backend_name, factory_path, options, region_bytes, pool_like=False):
    engine: TransferEngine = build_engine(backend_name, factory_path, options, "decode")
    if pool_like:  # as pdcore's CPU KV pool: huge pages where allowed, faulted in now
        import torch

        from pdcore.kvcache import host_memory

        buf = host_memory.zeros((region_bytes,), torch.uint8).numpy()
    else:
        buf = np.zeros(region_bytes, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    conn.send(engine.metadata())
    while True:
        cmd, *arg = conn.recv()
        if cmd == "connect":
            conn.send(engine.connect(arg[0]))
        elif cmd == "read":
            offset, length = arg
            conn.send(buf[offset : offset + length].tobytes())
        elif cmd == "notifications":
            deadline = time.monotonic() + arg[0]
            got = engine.notifications()
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
                got = engine.notifications()
            conn.send([payload for _, payload in got])
        elif cmd == "await_notification":
            conn.send(_await_notification(engine, buf, *arg))
        elif cmd == "deregister":
            engine.deregister(engine.regions)
            conn.send("deregistered")
        elif cmd == "close_engine":  # the engine goes, the process stays to answer reads
            engine.close()
            conn.send("closed")
        elif cmd == "close":
            engine.close()
            conn.send("closed")
            return


def _await_notification(engine, buf, payload: bytes, timeout: float, settle: float) -> dict:
    """Poll for ``payload``; the moment it shows, hash the whole buffer (what a
    decode server would read next), then keep polling ``settle`` seconds to count
    any repeat deliveries."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[str, bytes]] = []
    digest = None
    while digest is None and time.monotonic() < deadline:
        got = engine.notifications()
        seen.extend(got)
        if any(p == payload for _, p in got):
            digest = hashlib.sha256(buf.tobytes()).hexdigest()
        else:
            time.sleep(0.0005)
    end = time.monotonic() + settle
    while digest is not None and time.monotonic() < end:
        seen.extend(engine.notifications())
        time.sleep(0.005)
    return {
        "digest": digest,
        "count": sum(p == payload for _, p in seen),
        "peers": [peer for peer, p in seen if p == payload],
    }


class PeerProcess:
    """A spawned process running ``peer_main``; commands go over a pipe, bounded in time."""

    def __init__(
        self,
        backend_name: str,
        options: dict | None = None,
        region_bytes: int = 1 << 20,
        factory_path: str | None = None,
        timeout: float = 60.0,
        pool_like: bool = False,
    ):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.timeout = timeout
        args = (child, backend_name, factory_path, dict(options or {}), region_bytes, pool_like)
        self.proc = ctx.Process(target=peer_main, args=args, daemon=True)
        self.proc.start()
        self.metadata = self._recv()
        self.base = self.metadata["regions"][0]["addr"]
        self.size = region_bytes

    def _recv(self):
        if not self.conn.poll(self.timeout):
            raise AssertionError(f"peer process did not answer within {self.timeout}s")
        return self.conn.recv()

    def call(self, *cmd):
        self.conn.send(cmd)
        return self._recv()

    def send(self, *cmd) -> None:
        """Start a command without waiting; ``answer()`` collects its reply."""
        self.conn.send(cmd)

    def answer(self):
        return self._recv()

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.call("read", offset, self.size - offset if length is None else length)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.signal(signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        """Close the remote engine politely, then make sure the process is gone."""
        if self.proc.is_alive():
            try:
                self.call("close")
            except (AssertionError, EOFError, OSError):
                self.kill()
        self.kill()
