"""Fixtures for the mooncake engine's tests.

Peers are real spawned processes from pdcore's kit (``pdcore.testing``); the
kit's ``spawn_transfer_peer`` / ``new_transfer_engine`` fixtures use the backend
named here and stop everything they started at teardown.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdcore.disaggregation.transfer import MemoryRegion
from pdcore.testing.transfer_peer import PeerProcess, build_engine

BACKEND = "mooncake"
REGION = 1 << 20


@pytest.fixture
def pdcore_transfer_backend():
    return BACKEND


@pytest.fixture(scope="module")
def pair():
    """(engine, local buffer, peer, peer id): one engine and one peer per module."""
    engine = build_engine(BACKEND, None, {}, "prefill")
    buf = np.zeros(REGION, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = PeerProcess(BACKEND, {}, REGION)
    try:
        yield engine, buf, peer, engine.connect(peer.metadata)
    finally:
        peer.kill()
        engine.close()
