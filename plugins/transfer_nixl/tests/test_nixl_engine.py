"""Real transfers into another process's memory through NIXL (UCX) on 127.0.0.1."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from pdcore.disaggregation.transfer import MemoryRegion, TransferError, TransferStatus

KB = 1024
MB = 1 << 20


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


def write_and_wait(engine, peer_id, runs, notify=None, timeout=20.0):
    handle = engine.write(peer_id, runs, notify)
    try:
        handle.wait(timeout)
        assert handle.status() is TransferStatus.DONE
    finally:
        handle.release()


def record_descriptor_lengths(engine, monkeypatch) -> list[list[int]]:
    """Record the byte lengths of every descriptor list handed to NIXL."""
    seen: list[list[int]] = []
    original = engine._agent.get_xfer_descs

    def spy(descs, mem_type=None):
        seen.append([int(row[1]) for row in descs])
        return original(descs, mem_type)

    monkeypatch.setattr(engine._agent, "get_xfer_descs", spy)
    return seen


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
    seen = record_descriptor_lengths(engine, monkeypatch)
    buf[: 80 * KB] = np.random.default_rng(3).integers(0, 256, 80 * KB, dtype=np.uint8)
    pages = [(buf.ctypes.data + i * 4 * KB, peer.base + i * 4 * KB, 4 * KB) for i in range(16)]
    stray = (buf.ctypes.data + 72 * KB, peer.base + 200 * KB, 4 * KB)
    write_and_wait(engine, peer_id, [*pages[::-1], stray])
    assert [sorted(d) for d in seen] == [[4 * KB, 64 * KB]] * 2  # local and remote lists
    assert peer.read(0, 64 * KB) == buf[: 64 * KB].tobytes()
    assert peer.read(200 * KB, 4 * KB) == buf[72 * KB : 76 * KB].tobytes()


@pytest.mark.timeout(60)
def test_adjacent_registrations_are_not_merged(pair, monkeypatch):
    """NIXL rejects a descriptor spanning two registrations (NIXL_ERR_NOT_FOUND)."""
    engine, _, peer, peer_id = pair
    block = np.random.default_rng(4).integers(0, 256, 128 * KB, dtype=np.uint8)
    halves = [MemoryRegion(block.ctypes.data + i * 64 * KB, 64 * KB) for i in range(2)]
    engine.register(halves)
    seen = record_descriptor_lengths(engine, monkeypatch)
    try:
        runs = [
            (halves[0].end - 8 * KB, peer.base + 300 * KB, 8 * KB),
            (halves[1].addr, peer.base + 308 * KB, 8 * KB),
        ]
        write_and_wait(engine, peer_id, runs)
        assert seen[0] == [8 * KB, 8 * KB]
        assert peer.read(300 * KB, 16 * KB) == block[56 * KB : 72 * KB].tobytes()
    finally:
        engine.deregister(halves)


@pytest.mark.timeout(60)
def test_notification_reaches_peer_after_data(pair):
    engine, buf, peer, peer_id = pair
    buf[: 32 * KB] = np.random.default_rng(5).integers(0, 256, 32 * KB, dtype=np.uint8)
    write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base + 512 * KB, 32 * KB)], b"req-17")
    assert peer.call("notifications", 20.0) == [b"req-17"]
    assert peer.read(512 * KB, 32 * KB) == buf[: 32 * KB].tobytes()


@pytest.mark.timeout(60)
def test_notifications_name_the_sending_agent(new_transfer_engine):
    sender, receiver = new_transfer_engine(), new_transfer_engine()
    src, dst = np.arange(4 * KB, dtype=np.uint8), np.zeros(4 * KB, dtype=np.uint8)
    sender.register([MemoryRegion(src.ctypes.data, src.nbytes)])
    receiver.register([MemoryRegion(dst.ctypes.data, dst.nbytes)])
    peer_id = sender.connect(receiver.metadata())
    write_and_wait(sender, peer_id, [(src.ctypes.data, dst.ctypes.data, 4 * KB)], b"one")
    write_and_wait(sender, peer_id, [(src.ctypes.data, dst.ctypes.data, 4 * KB)], b"two")
    got, deadline = [], time.monotonic() + 20
    while len(got) < 2 and time.monotonic() < deadline:
        got += receiver.notifications()
        time.sleep(0.01)
    name = sender.metadata()["agent"]["name"]
    assert sorted(got) == [(name, b"one"), (name, b"two")]
    assert receiver.notifications() == []
    assert np.array_equal(src, dst)


@pytest.mark.timeout(60)
def test_killed_peer_fails_fast(new_transfer_engine, spawn_transfer_peer):
    """SIGKILL after a first write connected UCX: NIXL reports the disconnect at once."""
    engine = new_transfer_engine()
    buf = np.ones(256 * KB, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = spawn_transfer_peer()
    peer_id = engine.connect(peer.metadata)
    write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, 4 * KB)])
    peer.kill()
    start = time.monotonic()
    with pytest.raises(TransferError, match="RemoteDisconnect"):
        write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)])
    assert time.monotonic() - start < 10
    assert engine.inflight() == 0


@pytest.mark.timeout(60)
def test_hung_peer_fails_at_transfer_timeout(new_transfer_engine, spawn_transfer_peer, monkeypatch):
    """SIGSTOP: over UCX's TCP transport a large write stalls; the deadline ends it.

    (Over shared memory UCX would copy into the stopped process without its help.)
    """
    monkeypatch.setenv("UCX_TLS", "tcp")  # read when an agent starts; inherited by the peer
    engine = new_transfer_engine(transfer_timeout_s=1.5)
    buf = np.ones(64 * MB, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
    peer = spawn_transfer_peer(region_bytes=64 * MB)
    peer_id = engine.connect(peer.metadata)
    write_and_wait(engine, peer_id, [(buf.ctypes.data, peer.base, 4 * KB)])
    peer.signal(signal.SIGSTOP)
    start = time.monotonic()
    handle = engine.write(peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)])
    with pytest.raises(TransferError, match=r"transfer_timeout_s=1\.5s"):
        handle.wait(20)
    assert 1.4 < time.monotonic() - start < 5
    assert handle.status() is TransferStatus.FAILED
    handle.release()  # cancels the stalled request
    assert engine.inflight() == 0
    peer.kill()
    engine.close()


def test_bad_options_are_rejected(new_transfer_engine):
    with pytest.raises(TransferError, match="transfer_timeout_s"):
        new_transfer_engine(transfer_timeout_s="soon")
    with pytest.raises(TransferError, match="not available"):
        new_transfer_engine(backend="NO_SUCH_BACKEND")


def test_idle_agent_does_not_busy_poll_a_core(new_transfer_engine):
    """nixl's wrapper would start its progress thread with no delay between polls,
    burning a core the engine needs; pdcore sets a delay (progress_delay_us)."""
    import time

    import psutil

    engine = new_transfer_engine()
    proc = psutil.Process()
    before = proc.cpu_times()
    time.sleep(2.0)
    after = proc.cpu_times()
    busy = (after.user - before.user) + (after.system - before.system)
    assert busy < 1.0, f"{busy:.2f} s of CPU in 2 s idle: the progress thread spins"
    assert engine is not None


def _write_when_released(engine, peer_id, runs, barrier, errors: list, name: str) -> None:
    barrier.wait()
    try:
        write_and_wait(engine, peer_id, runs, timeout=20)
    except Exception as e:  # reported by the test, with the writer's name
        errors.append(f"{name}: {type(e).__name__}: {e}")


@pytest.mark.timeout(120)
def test_concurrent_first_writes_to_fresh_peers_all_complete(
    new_transfer_engine, spawn_transfer_peer
):
    """Prefill's transfer threads write one chunk to every decode TP rank at once, and the
    first write to a peer wires UCX's endpoint up lazily. Twice in CI such a write never
    completed, and the engine now posts one write at a time (``_post_lock``). Rounds of
    four threads each making their first write to one of two fresh peers at the same
    moment: every write lands, each within its deadline."""
    import threading

    engine = new_transfer_engine()
    half = 512 * KB
    src = np.arange(half // 4, dtype=np.uint32).view(np.uint8).copy()
    engine.register([MemoryRegion(src.ctypes.data, src.nbytes)])
    for _ in range(3):
        peers = [spawn_transfer_peer(region_bytes=MB) for _ in range(2)]
        ids = [engine.connect(p.metadata) for p in peers]
        barrier, errors = threading.Barrier(4), []
        threads = []
        for k in range(4):
            peer, peer_id = peers[k % 2], ids[k % 2]
            runs = [(src.ctypes.data, peer.base + (k // 2) * half, half)]
            args = (engine, peer_id, runs, barrier, errors, f"writer {k}")
            threads.append(threading.Thread(target=_write_when_released, args=args))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a first write hung"
        assert errors == []
        for p in peers:
            assert p.read(0, half) == src.tobytes() == p.read(half, half)
            p.kill()
        assert engine.inflight() == 0
