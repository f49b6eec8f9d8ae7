"""Conformance suite for transfer backends: two real processes, real bytes.

Subclass ``TransferBackendSuite`` and set ``backend_name``; set ``engine_options``
for engine-specific options and ``factory_path = "module:callable"`` to test an
engine that is not registered through an entry point. Every check is bounded in
time. Beyond bytes landing intact, it holds an engine to the contract written in
``pdcore.disaggregation.transfer``: a notification shows only after all the
bytes it announces; several threads may write to one peer at once; each
notification arrives once; ``close()`` leaves no thread or file descriptor
behind; a peer's refusal, death (even mid-transfer) or hang is a failure
reported within the deadline, never a success or a hang.

Deadlines: the kit builds the engines of its failure checks with
``{deadline_option: transfer_deadline_s}`` added to ``engine_options`` (pdcore's
``transfer_timeout_s`` by default; set ``deadline_option = None`` for an engine
whose deadline is fixed, and ``transfer_deadline_s`` to that value) and expects
each failure within ``transfer_deadline_s + deadline_grace_s``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager

import numpy as np
import pytest

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    TransferEngine,
    TransferError,
    TransferStatus,
    TransferTimeout,
)
from pdcore.testing.transfer_peer import PeerProcess, build_engine

PAGE = 4096
REGION_PAGES = 64
LARGE_REGION = 32 << 20  # well beyond loopback socket buffers: a write to it is in flight
WRITER_THREADS = 8


def _peer(suite, region_bytes: int = REGION_PAGES * PAGE, options: dict | None = None):
    return PeerProcess(
        suite.backend_name,
        suite.engine_options if options is None else options,
        region_bytes,
        suite.factory_path,
        suite.startup_timeout_s,
    )


def _process_resources() -> tuple[int, int]:
    """(threads, open file descriptors) of this process, native threads included."""
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


class TransferBackendSuite:
    backend_name: str = ""
    factory_path: str | None = None
    engine_options: dict = {}
    dead_peer_timeout_s: float = 60.0
    startup_timeout_s: float = 60.0
    transfer_timeout_s: float = 30.0
    deadline_option: str | None = "transfer_timeout_s"
    transfer_deadline_s: float = 3.0
    deadline_grace_s: float = 5.0
    close_grace_s: float = 3.0

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

    def _deadline_options(self) -> dict:
        options = dict(self.engine_options)
        if self.deadline_option:
            options[self.deadline_option] = self.transfer_deadline_s
        return options

    @contextmanager
    def _connected_pair(self, region_bytes: int):
        """A fresh engine (deadline options) and a fresh peer of ``region_bytes``,
        connected both ways and warmed by one page written (so lazy handshakes are
        done); the peer is SIGKILLed and the engine closed after."""
        options = self._deadline_options()
        engine = build_engine(self.backend_name, self.factory_path, options, "prefill")
        buf = np.zeros(region_bytes, dtype=np.uint8)
        peer = None
        try:
            engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
            peer = _peer(self, region_bytes, options)
            peer_id = engine.connect(peer.metadata)
            peer.call("connect", engine.metadata())
            self._write_pages(engine, buf, peer, peer_id, [(0, 0)])
            yield engine, buf, peer, peer_id
        finally:
            if peer is not None:
                peer.kill()
            engine.close()

    def _start_write(self, engine, peer_id, runs) -> tuple[object, float]:
        """``engine.write`` watched by a thread, since a broken engine may block in it:
        (the handle, a ``TransferError``, or a PENDING status; when it started)."""
        start = time.monotonic()
        result: list = [TransferStatus.PENDING]

        def submit() -> None:
            try:
                result[0] = engine.write(peer_id, runs)
            except TransferError as e:
                result[0] = e

        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        thread.join(self.transfer_deadline_s + self.deadline_grace_s)
        return result[0], start

    def _outcome_within_deadline(self, submitted) -> tuple[TransferStatus, str, float]:
        """Wait past the deadline; (final status, failure text, seconds taken)."""
        handle, start = submitted
        if handle is TransferStatus.PENDING:
            return handle, "write() itself blocked", time.monotonic() - start
        if isinstance(handle, TransferError):
            return TransferStatus.FAILED, str(handle), time.monotonic() - start
        limit = start + self.transfer_deadline_s + self.deadline_grace_s
        try:
            handle.wait(max(0.0, limit - time.monotonic()))
            return TransferStatus.DONE, "", time.monotonic() - start
        except TransferTimeout as e:
            return TransferStatus.PENDING, str(e), time.monotonic() - start
        except TransferError as e:
            return TransferStatus.FAILED, str(e), time.monotonic() - start
        finally:
            handle.release()

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

    # ---- the written contract: ordering, concurrency, lifecycle, failures -------

    def _notified_write(self, engine, buf, peer, peer_id, settle: float) -> tuple[dict, bytes]:
        """Write the whole region with a fresh notification while the peer polls
        for it; the peer's view at the moment the notification showed."""
        if not engine.supports_notifications:
            pytest.skip(f"{engine.name} does not deliver notifications")
        payload = f"room-{uuid.uuid4().hex}".encode()
        buf[:] = np.random.default_rng().integers(0, 256, buf.nbytes, dtype=np.uint8)
        peer.send("await_notification", payload, self.transfer_timeout_s, settle)
        handle = engine.write(peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)], payload)
        try:
            handle.wait(self.transfer_timeout_s)
        finally:
            handle.release()
        return peer.answer(), hashlib.sha256(buf.tobytes()).hexdigest()

    def test_notification_shows_only_after_all_its_bytes(self, pair):
        engine, buf, peer, peer_id = pair
        seen, expected = self._notified_write(engine, buf, peer, peer_id, settle=0.0)
        assert seen["digest"] is not None, "notification never delivered"
        assert seen["digest"] == expected, (
            "the peer saw the notification before all the bytes it announces were in its "
            "memory: a decode server would read stale KV"
        )

    def test_notification_names_the_sender_as_the_peer_knows_it(self, pair):
        engine, buf, peer, peer_id = pair
        seen, _ = self._notified_write(engine, buf, peer, peer_id, settle=0.0)
        sender = peer.call("connect", engine.metadata())  # connect is idempotent
        assert seen["peers"][:1] == [sender], (
            f"notifications() must name the sender by the id the receiver's connect() "
            f"returned for it ({sender!r}); got {seen['peers']!r}"
        )

    def test_each_notification_is_delivered_once(self, pair):
        engine, buf, peer, peer_id = pair
        seen, _ = self._notified_write(engine, buf, peer, peer_id, settle=0.3)
        assert seen["count"] == 1, (
            f"one write's notification was delivered {seen['count']} times; the decode "
            "side would finish the same request more than once"
        )

    def test_writes_from_several_threads_to_one_peer_all_land(self, pair):
        engine, buf, peer, peer_id = pair
        per_thread = REGION_PAGES // WRITER_THREADS
        rng = np.random.default_rng(3)
        buf[:] = rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
        dst = rng.permutation(REGION_PAGES)  # scattered, so each batch has several runs
        errors: list[BaseException] = []
        barrier = threading.Barrier(WRITER_THREADS)

        def writer(t: int) -> None:
            pages = range(t * per_thread, (t + 1) * per_thread)
            runs = [
                (buf.ctypes.data + p * PAGE, peer.base + int(dst[p]) * PAGE, PAGE) for p in pages
            ]
            try:
                barrier.wait(self.transfer_timeout_s)
                handle = engine.write(peer_id, runs)
                try:
                    handle.wait(self.transfer_timeout_s)
                finally:
                    handle.release()
            except BaseException as e:  # reported below, with the thread's number
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(WRITER_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.transfer_timeout_s + 5)
        assert not any(t.is_alive() for t in threads), "a concurrent write never finished"
        assert not errors, f"concurrent writes to one peer failed: {errors[:3]!r}"
        self._assert_landed(
            peer,
            {int(dst[p]): buf[p * PAGE : (p + 1) * PAGE].tobytes() for p in range(REGION_PAGES)},
        )
        assert engine.inflight() == 0, "every concurrent handle was released"

    def _one_cycle(self, pair) -> None:
        _, _, peer, _ = pair
        engine = build_engine(self.backend_name, self.factory_path, self.engine_options, "prefill")
        buf = np.ones(4 * PAGE, dtype=np.uint8)
        try:
            engine.register([MemoryRegion(buf.ctypes.data, buf.nbytes)])
            peer_id = engine.connect(peer.metadata)
            peer.call("connect", engine.metadata())
            notify = b"cycle" if engine.supports_notifications else None
            handle = engine.write(peer_id, [(buf.ctypes.data, peer.base, PAGE)], notify)
            try:
                handle.wait(self.transfer_timeout_s)
            finally:
                handle.release()
        finally:
            engine.close()

    def test_close_leaves_no_threads_or_descriptors(self, pair):
        if not os.path.isdir("/proc/self/task"):
            pytest.skip("counts threads and descriptors through /proc")
        self._one_cycle(pair)  # a native library may start its own threads once
        before = _process_resources()
        self._one_cycle(pair)
        deadline = time.monotonic() + self.close_grace_s
        while (after := _process_resources()) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        threads, fds = after
        assert threads <= before[0], (
            f"{threads - before[0]} thread(s) still running {self.close_grace_s}s after close()"
        )
        assert fds <= before[1], (
            f"{fds - before[1]} file descriptor(s) (sockets, listeners) still open "
            f"{self.close_grace_s}s after close()"
        )

    def _failed_write_to(self, peer_cmd: str) -> tuple[TransferStatus, str, float]:
        with self._connected_pair(REGION_PAGES * PAGE) as (engine, buf, peer, peer_id):
            peer.call(peer_cmd)
            runs = [(buf.ctypes.data, peer.base, PAGE)]
            return self._outcome_within_deadline(self._start_write(engine, peer_id, runs))

    def test_write_into_deregistered_peer_memory_fails(self):
        status, detail, _ = self._failed_write_to("deregister")
        assert status is not TransferStatus.DONE, (
            "a write into memory the peer had deregistered reported success"
        )
        assert status is TransferStatus.FAILED, f"the failure was never reported: {detail}"

    def test_write_to_a_closed_peer_engine_fails(self):
        status, detail, _ = self._failed_write_to("close_engine")
        assert status is not TransferStatus.DONE, (
            "a write to a peer whose engine was closed reported success"
        )
        assert status is TransferStatus.FAILED, f"the failure was never reported: {detail}"

    def test_peer_killed_mid_transfer_ends_within_deadline(self):
        with self._connected_pair(LARGE_REGION) as (engine, buf, peer, peer_id):
            peer.signal(signal.SIGSTOP)  # the write stalls part-way, then the peer dies
            threading.Timer(0.3, peer.kill).start()
            submitted = self._start_write(
                engine, peer_id, [(buf.ctypes.data, peer.base, buf.nbytes)]
            )
            status, detail, elapsed = self._outcome_within_deadline(submitted)
        assert status is not TransferStatus.PENDING, (
            f"a write whose peer died mid-transfer never ended: {detail}"
        )
        limit = self.transfer_deadline_s + self.deadline_grace_s
        assert elapsed <= limit, f"the write took {elapsed:.1f}s to end (limit {limit:.1f}s)"

    def test_hung_peer_ends_within_deadline(self):
        """A stopped peer: the write fails by the deadline, or, for one-sided engines
        that write into its memory without it (RDMA, cross-memory attach), is DONE
        with the bytes really there. Never still pending at the deadline."""
        with self._connected_pair(LARGE_REGION) as (engine, buf, peer, peer_id):
            buf[:] = np.random.default_rng(4).integers(0, 256, buf.nbytes, dtype=np.uint8)
            peer.signal(signal.SIGSTOP)  # alive, connected, answering nothing
            runs = [(buf.ctypes.data, peer.base, buf.nbytes)]
            status, detail, elapsed = self._outcome_within_deadline(
                self._start_write(engine, peer_id, runs)
            )
            peer.signal(signal.SIGCONT)
            if status is TransferStatus.DONE:
                got = hashlib.sha256(peer.read(0, buf.nbytes)).hexdigest()
                assert got == hashlib.sha256(buf.tobytes()).hexdigest(), (
                    "a write to a stopped peer reported success, but the bytes are not in "
                    "its memory"
                )
        assert status is not TransferStatus.PENDING, (
            f"a write to a stopped peer was not ended by the engine's deadline "
            f"({self.deadline_option}={self.transfer_deadline_s:g}s): {detail}"
        )
        limit = self.transfer_deadline_s + self.deadline_grace_s
        assert elapsed <= limit, f"the write took {elapsed:.1f}s to end (limit {limit:.1f}s)"
