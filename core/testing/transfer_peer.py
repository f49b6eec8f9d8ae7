"""The remote side of the transfer conformance suite, run in a spawned process.

It builds an engine of the backend under test, registers a zeroed buffer, and
answers commands over a pipe so the test process can check what landed there.
"""

from __future__ import annotations

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
        elif cmd == "close":
            engine.close()
            conn.send("closed")
            return


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
