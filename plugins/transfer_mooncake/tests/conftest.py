"""Fixtures: mooncake engines, and real peers in spawned processes.

A peer runs pdcore's kit ``peer_main``: it registers one zeroed buffer and
answers ``read``/``connect`` over a pipe, so tests check the bytes that landed
in another process's memory. Everything started here is stopped at teardown.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig
from pdcore.registry import Registry
from pdcore.testing.transfer_peer import peer_main

BACKEND = "mooncake"
REGION = 1 << 20


class PeerProcess:
    def __init__(self, options: dict, region_bytes: int, timeout: float = 60.0):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.timeout = timeout
        args = (child, BACKEND, None, dict(options), region_bytes)
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


def _engine(**options):
    backend = Registry.discover().get("transfer", BACKEND)
    return backend.factory(TransferConfig(role="prefill", options=options))


@pytest.fixture
def spawn_peer():
    """``spawn_peer(region_bytes=..., **options)`` starts a peer; all are killed after."""
    peers: list[PeerProcess] = []

    def spawn(region_bytes: int = REGION, **options) -> PeerProcess:
        peers.append(PeerProcess(options, region_bytes))
        return peers[-1]

    yield spawn
    for p in peers:
        p.kill()


@pytest.fixture
def new_engine():
    """``new_engine(**options)`` builds a local engine; all are closed after."""
    engines = []

    def build(**options):
        engines.append(_engine(**options))
        return engines[-1]

    yield build
    for e in engines:
        e.close()


@pytest.fixture(scope="module")
def pair():
    """(engine, local buffer, peer, peer id): one engine and one peer per module."""
    engine = _engine()
    buf = np.zeros(REGION, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = PeerProcess({}, REGION)
    try:
        yield engine, buf, peer, engine.connect(peer.metadata)
    finally:
        peer.kill()
        engine.close()
