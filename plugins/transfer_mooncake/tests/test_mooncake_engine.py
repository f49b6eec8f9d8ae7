"""Real transfers into another process's memory through Mooncake over TCP on 127.0.0.1."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from pdcore.disaggregation.transfer import MemoryRegion, TransferError, TransferStatus

KB = 1024


class SubmitRecorder:
    """Wraps the native engine to record ``transfer_submit_write`` calls."""

    def __init__(self, native):
        self.native = native
        self.lengths: list[int] = []

    def transfer_submit_write(self, session, local, remote, length):
        self.lengths.append(length)
        return self.native.transfer_submit_write(session, local, remote, length)

    def __getattr__(self, name):
        return getattr(self.native, name)


def random_runs(rng, local_base, remote_base, size, count):
    """``count`` runs of random length; destinations never overlap, sources may."""
    slot = size // count
    runs = []
    for i in range(count):
        length = int(rng.integers(1, slot + 1))
        dst = i * slot + int(rng.integers(0, slot - length + 1))
        src = int(rng.integers(0, size - length + 1))
        runs.append((local_base + src, remote_base + dst, length))
    return runs


def write_and_wait(engine, peer_id, runs, timeout=20.0):
    handle = engine.write(peer_id, runs)
    try:
        handle.wait(timeout)
        assert handle.status() is TransferStatus.DONE
    finally:
        handle.release()


@pytest.mark.timeout(60)
def test_random_runs_land_intact(pair):
    engine, buf, peer, peer_id = pair
    rng = np.random.default_rng(7)
    buf[:] = rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
    runs = random_runs(rng, buf.ctypes.data, peer.base, buf.nbytes, 64)
    write_and_wait(engine, peer_id, runs)
    remote = np.frombuffer(peer.read(), dtype=np.uint8)
    for local, dst, length in runs:
        src, off = local - buf.ctypes.data, dst - peer.base
        assert remote[off : off + length].tobytes() == buf[src : src + length].tobytes()
    assert engine.inflight() == 0


@pytest.mark.timeout(60)
def test_contiguous_runs_are_submitted_coalesced(pair, monkeypatch):
    engine, buf, peer, peer_id = pair
    recorder = SubmitRecorder(engine._te)
    monkeypatch.setattr(engine, "_te", recorder)
    buf[: 80 * KB] = np.random.default_rng(3).integers(0, 256, 80 * KB, dtype=np.uint8)
    pages = [(buf.ctypes.data + i * 4 * KB, peer.base + i * 4 * KB, 4 * KB) for i in range(16)]
    stray = (buf.ctypes.data + 72 * KB, peer.base + 200 * KB, 4 * KB)
    write_and_wait(engine, peer_id, [*pages[::-1], stray])
    assert sorted(recorder.lengths) == [4 * KB, 64 * KB]
    assert peer.read(0, 64 * KB) == buf[: 64 * KB].tobytes()
    assert peer.read(200 * KB, 4 * KB) == buf[72 * KB : 76 * KB].tobytes()


@pytest.mark.timeout(60)
def test_adjacent_registrations_are_not_merged(pair, monkeypatch):
    """Two regions carved from one allocation: a run may not span both registrations."""
    engine, _, peer, peer_id = pair
    block = np.random.default_rng(4).integers(0, 256, 128 * KB, dtype=np.uint8)
    halves = [MemoryRegion(block.ctypes.data + i * 64 * KB, 64 * KB) for i in range(2)]
    engine.register(halves)
    recorder = SubmitRecorder(engine._te)
    monkeypatch.setattr(engine, "_te", recorder)
    try:
        runs = [
            (halves[0].end - 8 * KB, peer.base + 300 * KB, 8 * KB),
            (halves[1].addr, peer.base + 308 * KB, 8 * KB),
        ]
        write_and_wait(engine, peer_id, runs)
        assert recorder.lengths == [8 * KB, 8 * KB]
        assert peer.read(300 * KB, 16 * KB) == block[56 * KB : 72 * KB].tobytes()
    finally:
        engine.deregister(halves)


@pytest.mark.timeout(60)
def test_killed_peer_fails_fast(new_transfer_engine, spawn_transfer_peer):
    """SIGKILL after a first write opened the connection: Mooncake reports -1 quickly."""
    engine = new_transfer_engine()
    buf = np.ones(256 * KB, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = spawn_transfer_peer()
    peer_id = engine.connect(peer.metadata)
    write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, 4 * KB)])
    peer.kill()
    start = time.monotonic()
    with pytest.raises(TransferError, match="failed"):
        write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)])
    assert time.monotonic() - start < 10
    assert engine.inflight() == 0


@pytest.mark.timeout(60)
def test_hung_peer_fails_at_transfer_timeout(new_transfer_engine, spawn_transfer_peer):
    """SIGSTOP: the peer never acks; the engine's own deadline ends the transfer."""
    engine = new_transfer_engine(transfer_timeout_s=1.5)
    buf = np.ones(1 << 20, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = spawn_transfer_peer()
    peer_id = engine.connect(peer.metadata)
    write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, 4 * KB)])
    peer.signal(signal.SIGSTOP)
    start = time.monotonic()
    handle = engine.write(peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)])
    with pytest.raises(TransferError, match=r"transfer_timeout_s=1\.5s"):
        handle.wait(20)
    assert 1.4 < time.monotonic() - start < 5
    assert handle.status() is TransferStatus.FAILED
    handle.release()
    assert engine.inflight() == 0
    start = time.monotonic()
    engine.close()  # with the abandoned batch still queued in Mooncake
    assert time.monotonic() - start < 5


def test_bad_options_are_rejected(new_transfer_engine):
    with pytest.raises(TransferError, match="transfer_timeout_s"):
        new_transfer_engine(transfer_timeout_s=0)


@pytest.mark.timeout(120)
def test_thousands_of_runs_that_cannot_coalesce_all_land(pair):
    """Fragmented pages give one write thousands of runs; Mooncake's TCP queue
    refuses that many at once, so the engine keeps a bounded number in flight."""
    engine, buf, peer, peer_id = pair
    n, size, stride = 8192, 64, 128  # gaps between runs: nothing merges
    buf[:] = np.random.default_rng(9).integers(0, 256, buf.nbytes, dtype=np.uint8)
    runs = [(buf.ctypes.data + i * stride, peer.base + i * stride, size) for i in range(n)]
    write_and_wait(engine, peer_id, runs, timeout=90.0)
    got = np.frombuffer(peer.read(0, n * stride), dtype=np.uint8).reshape(n, stride)
    want = buf[: n * stride].reshape(n, stride)
    assert np.array_equal(got[:, :size], want[:, :size]), "a run's bytes did not land"
