"""Conformance suite for transfer backends: two real processes, real bytes.

Subclass ``TransferBackendSuite`` and set ``backend_name``; set ``engine_options``
for engine-specific options and ``factory_path = "module:callable"`` to test an
engine that is not registered through an entry point. Every check is bounded in
time; the dead-peer check kills the peer with SIGKILL and expects a failure, not
a hang, within ``dead_peer_timeout_s``.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import numpy as np
import pytest

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    TransferEngine,
    TransferError,
    TransferStatus,
)
from pdcore.testing.transfer_peer import PeerProcess, build_engine

PAGE = 4096
REGION_PAGES = 64


def _peer(suite) -> PeerProcess:
    return PeerProcess(
        suite.backend_name,
        suite.engine_options,
        REGION_PAGES * PAGE,
        suite.factory_path,
        suite.startup_timeout_s,
    )


class TransferBackendSuite:
    backend_name: str = ""
    factory_path: str | None = None
    engine_options: dict = {}
    dead_peer_timeout_s: float = 60.0
    startup_timeout_s: float = 60.0
    transfer_timeout_s: float = 30.0

    # ---- fixtures --------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def pair(cls):
        """(local engine, local buffer, peer, peer id) shared by one class's tests."""
        engine = build_engine(cls.backend_name, cls.factory_path, cls.engine_options, "prefill")
        buf = np.zeros(REGION_PAGES * PAGE, dtype=np.uint8)
        engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
        peer = _peer(cls)
        try:
            peer_id = engine.connect(peer.metadata)
            peer.call("connect", engine.metadata())
            yield engine, buf, peer, peer_id
        finally:
            peer.close()
            engine.close()

    @contextmanager
    def _fresh_engine(self):
        engine = build_engine(self.backend_name, self.factory_path, self.engine_options, "prefill")
        buf = np.zeros(4 * PAGE, dtype=np.uint8)
        try:
            engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
            yield engine, buf
        finally:
            engine.close()

    def _write_pages(self, engine, buf, peer, peer_id, pairs, notify=None):
        """Fill local pages with random bytes, write them to peer pages, return data."""
        rng = np.random.default_rng(len(pairs) * 7919 + pairs[0][0])
        for src, _ in pairs:
            buf[src * PAGE : (src + 1) * PAGE] = rng.integers(0, 256, PAGE, dtype=np.uint8)
        runs = [(buf.ctypes.data + s * PAGE, peer.base + d * PAGE, PAGE) for s, d in pairs]
        handle = engine.write(peer_id, runs, notify)
        try:
            handle.wait(self.transfer_timeout_s)
        finally:
            handle.release()
        return {d: buf[s * PAGE : (s + 1) * PAGE].tobytes() for s, d in pairs}

    def _assert_landed(self, peer, expected):
        for dst, data in expected.items():
            got = peer.read(dst * PAGE, PAGE)
            assert got == data, (
                f"peer page {dst}: bytes differ from what was written "
                f"({sum(a != b for a, b in zip(got, data, strict=True))} of {PAGE} bytes wrong)"
            )

    # ---- the suite -------------------------------------------------------------

    def test_metadata_is_json_serializable(self, pair):
        engine, _, peer, _ = pair
        for meta in (engine.metadata(), peer.metadata):
            assert json.loads(json.dumps(meta)) == meta, "metadata must survive JSON round trip"
            assert meta["engine"] == engine.name

    def test_single_page_lands_intact(self, pair):
        engine, buf, peer, peer_id = pair
        self._assert_landed(peer, self._write_pages(engine, buf, peer, peer_id, [(0, 5)]))

    def test_scattered_pages_in_one_batch(self, pair):
        engine, buf, peer, peer_id = pair
        rng = np.random.default_rng(1)
        src = rng.choice(REGION_PAGES, 24, replace=False)
        dst = rng.choice(REGION_PAGES, 24, replace=False)
        pairs = [(int(s), int(d)) for s, d in zip(src, dst, strict=True)]
        self._assert_landed(peer, self._write_pages(engine, buf, peer, peer_id, pairs))

    def test_contiguous_runs_coalesce_and_land(self, pair):
        engine, buf, peer, peer_id = pair
        pairs = [(10 + i, 30 + i) for i in range(8)] + [(40, 2), (41, 3)]
        self._assert_landed(peer, self._write_pages(engine, buf, peer, peer_id, pairs))

    def test_concurrent_batches_all_complete(self, pair):
        engine, buf, peer, peer_id = pair
        rng = np.random.default_rng(2)
        buf[: 8 * PAGE] = rng.integers(0, 256, 8 * PAGE, dtype=np.uint8)
        handles = [
            engine.write(peer_id, [(buf.ctypes.data + i * PAGE, peer.base + (50 + i) * PAGE, PAGE)])
            for i in range(8)
        ]
        assert engine.inflight() == 8, "every submitted batch counts as in flight"
        try:
            for h in handles:
                h.wait(self.transfer_timeout_s)
                assert h.status() is TransferStatus.DONE
        finally:
            for h in handles:
                h.release()
                h.release()  # idempotent
        assert engine.inflight() == 0
        self._assert_landed(
            peer, {50 + i: buf[i * PAGE : (i + 1) * PAGE].tobytes() for i in range(8)}
        )

    def test_notification_delivered_after_data(self, pair):
        engine, buf, peer, peer_id = pair
        if not engine.supports_notifications:
            with pytest.raises(TransferError, match="notification"):
                engine.write(peer_id, [(buf.ctypes.data, peer.base, PAGE)], notify=b"x")
            return
        expected = self._write_pages(engine, buf, peer, peer_id, [(3, 7)], notify=b"room-42")
        got = peer.call("notifications", self.transfer_timeout_s)
        assert b"room-42" in got, f"notification not delivered; got {got!r}"
        self._assert_landed(peer, expected)

    def test_remote_out_of_bounds_is_rejected(self, pair):
        engine, buf, peer, peer_id = pair
        before = engine.inflight()
        with pytest.raises(TransferError, match="outside"):
            engine.write(peer_id, [(buf.ctypes.data, peer.base + REGION_PAGES * PAGE, PAGE)])
        with pytest.raises(TransferError, match="outside"):
            engine.write(peer_id, [(buf.ctypes.data, peer.base - PAGE, PAGE)])
        assert engine.inflight() == before, "a rejected write must not leave a handle behind"

    def test_runs_straddling_a_region_end_are_rejected(self, pair):
        engine, buf, peer, peer_id = pair
        base, size = buf.ctypes.data, REGION_PAGES * PAGE
        bad = [
            [(base, peer.base + size - PAGE // 2, PAGE)],  # straddles the remote end
            [(base + buf.nbytes - PAGE // 2, peer.base, PAGE)],  # straddles the local end
            [(base, peer.base, PAGE), (base + 2 * PAGE, peer.base + size, 1)],  # one bad run
        ]
        for runs in bad:
            with pytest.raises(TransferError, match="outside"):
                engine.write(peer_id, runs)
        assert engine.inflight() == 0, "a rejected write must not leave a handle behind"

    def test_local_out_of_bounds_is_rejected(self, pair):
        engine, buf, peer, peer_id = pair
        with pytest.raises(TransferError, match="outside"):
            engine.write(peer_id, [(buf.ctypes.data + buf.nbytes, peer.base, PAGE)])

    def test_unknown_peer_is_rejected(self, pair):
        engine, buf, peer, _ = pair
        with pytest.raises(TransferError, match="unknown peer"):
            engine.write("no-such-peer", [(buf.ctypes.data, peer.base, PAGE)])

    def test_mismatched_engine_metadata_is_rejected(self, pair):
        engine, _, peer, _ = pair
        bogus = dict(peer.metadata, engine="some-other-engine")
        with pytest.raises(TransferError, match="same --disaggregation-transfer-backend"):
            engine.connect(bogus)

    def test_no_handle_leaks_after_release(self, pair):
        engine, *_ = pair
        assert engine.inflight() == 0, f"{engine.inflight()} handles still in flight"

    def test_close_releases_everything(self):
        with self._fresh_engine() as (engine, _):
            pass
        assert engine.inflight() == 0
        assert engine.regions == [], "close() must deregister memory"
        engine.close()  # idempotent
        with pytest.raises(TransferError, match="closed"):
            engine.metadata()

    def test_dead_peer_fails_within_timeout(self):
        with self._fresh_engine() as (engine, buf):
            peer = _peer(self)
            try:
                peer_id = engine.connect(peer.metadata)
                peer.call("connect", engine.metadata())
            finally:
                peer.kill()
            start = time.monotonic()
            failed = False
            try:
                handle = engine.write(peer_id, [(buf.ctypes.data, peer.base, PAGE)])
            except TransferError:
                failed = True
            else:
                try:
                    handle.wait(self.dead_peer_timeout_s + 5)
                except TransferError as e:
                    failed = True
                    assert "not done after" not in str(e), (
                        f"the engine never reported the dead peer; the wait timed out: {e}"
                    )
                finally:
                    handle.release()
            elapsed = time.monotonic() - start
            assert failed, "a write to a SIGKILLed peer reported success"
            assert elapsed <= self.dead_peer_timeout_s + 5, f"failure took {elapsed:.1f}s"
            assert engine.inflight() == 0

    def test_engine_is_a_transfer_engine(self, pair):
        engine, *_ = pair
        assert isinstance(engine, TransferEngine)
        if self.factory_path is None:
            assert engine.name == self.backend_name, "engine.name must match its registration"
