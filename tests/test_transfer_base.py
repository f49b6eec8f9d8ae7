"""TransferEngine base-class rules that every engine inherits."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    TransferConfig,
    TransferEngine,
    TransferError,
    TransferStatus,
    TransferTimeout,
    coalesce_runs,
)
from pdcore.platform import MemoryKind


class LoopbackEngine(TransferEngine):
    """In-process engine: memmove on submit; records submitted runs."""

    name = "loopback"
    supports_notifications = True

    def __init__(self, config, never_finish=False):
        super().__init__(config)
        self.submitted, self.released, self.never_finish = [], [], never_finish

    def _register(self, regions):
        self.registered = list(regions)

    def _deregister(self, regions):
        self.registered = []

    def _agent_metadata(self):
        return {"id": "me"}

    def _connect(self, meta):
        return meta["id"], None

    def _write(self, peer, runs, notify):
        self.submitted.append(runs)
        if not self.never_finish:
            for local, remote, length in runs:
                ctypes.memmove(remote, local, length)
        return len(self.submitted)

    def _poll(self, token):
        return TransferStatus.PENDING if self.never_finish else TransferStatus.DONE

    def _release(self, token):
        self.released.append(token)


@pytest.fixture
def engine_and_bufs():
    engine = LoopbackEngine(TransferConfig())
    src, dst = np.arange(4096, dtype=np.uint8), np.zeros(4096, dtype=np.uint8)
    engine.register([MemoryRegion(src.ctypes.data, 4096)])
    peer = engine.connect(
        {
            "engine": "loopback",
            "agent": {"id": "peer"},
            "regions": [MemoryRegion(dst.ctypes.data, 4096).to_dict()],
        }
    )
    yield engine, src, dst, peer
    engine.close()


def test_coalesce_merges_runs_contiguous_on_both_sides():
    runs = [(200, 1200, 100), (0, 1000, 100), (100, 1100, 100), (400, 5000, 50)]
    assert coalesce_runs(runs) == [(0, 1000, 300), (400, 5000, 50)]


def test_coalesce_keeps_runs_contiguous_on_one_side_only():
    assert coalesce_runs([(0, 0, 10), (10, 20, 10)]) == [(0, 0, 10), (10, 20, 10)]


def test_write_copies_and_coalesces(engine_and_bufs):
    engine, src, dst, peer = engine_and_bufs
    base_s, base_d = src.ctypes.data, dst.ctypes.data
    handle = engine.write(peer, [(base_s + 64, base_d + 64, 64), (base_s, base_d, 64)])
    handle.wait(1)
    assert engine.submitted[-1] == [(base_s, base_d, 128)]
    assert bytes(dst[:128]) == bytes(src[:128])
    handle.release()
    assert engine.inflight() == 0 and engine.released == [1]


def test_overlapping_registration_is_rejected():
    engine = LoopbackEngine(TransferConfig())
    buf = np.zeros(100, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, 100)])
    with pytest.raises(TransferError, match="overlaps"):
        engine.register([MemoryRegion(buf.ctypes.data + 50, 100)])


def test_unsupported_memory_kind_is_rejected():
    with pytest.raises(TransferError, match="cannot move VRAM"):
        LoopbackEngine(TransferConfig(memory_kind=MemoryKind.VRAM))


def test_peer_regions_are_validated():
    engine = LoopbackEngine(TransferConfig())
    with pytest.raises(TransferError, match="invalid memory region"):
        engine.connect(
            {
                "engine": "loopback",
                "agent": {"id": "p"},
                "regions": [{"addr": 10, "length": -5, "kind": "DRAM", "device_id": 0}],
            }
        )
    with pytest.raises(TransferError, match="malformed"):
        engine.connect({"engine": "loopback", "agent": {"id": "p"}, "regions": [{"addr": 1}]})


def test_run_straddling_region_end_is_rejected(engine_and_bufs):
    engine, src, dst, peer = engine_and_bufs
    with pytest.raises(TransferError, match="outside the memory peer"):
        engine.write(peer, [(src.ctypes.data, dst.ctypes.data + 4000, 200)])
    assert engine.submitted == [], "nothing may be submitted when any run is out of bounds"


def test_wait_times_out_with_clear_error():
    engine = LoopbackEngine(TransferConfig(), never_finish=True)
    buf = np.zeros(64, dtype=np.uint8)
    engine.register([MemoryRegion(buf.ctypes.data, 64)])
    peer = engine.connect(
        {
            "engine": "loopback",
            "agent": {"id": "p"},
            "regions": [MemoryRegion(buf.ctypes.data, 64).to_dict()],
        }
    )
    handle = engine.write(peer, [(buf.ctypes.data, buf.ctypes.data, 8)])
    with pytest.raises(TransferTimeout, match=r"not done after 0\.1s"):
        handle.wait(0.1)
    engine.close()
    assert engine.inflight() == 0, "close() must release pending handles"


def test_handle_use_after_release_is_an_error(engine_and_bufs):
    engine, src, dst, peer = engine_and_bufs
    engine.never_finish = True
    handle = engine.write(peer, [(src.ctypes.data, dst.ctypes.data, 8)])
    handle.release()
    with pytest.raises(TransferError, match="after release"):
        handle.status()


def test_metadata_without_agent_is_a_transfer_error():
    engine = LoopbackEngine(TransferConfig())
    with pytest.raises(TransferError, match="malformed peer metadata"):
        engine.connect({"engine": "loopback", "regions": []})


def _random_runs(rng, n: int, page: int, pages: int, base_l: int, base_r: int):
    """Page-sized runs over ``pages`` pages, in random order, mostly contiguous pairs."""
    src = rng.permutation(pages)[:n] if rng.random() < 0.5 else np.arange(n)
    dst = src if rng.random() < 0.5 else rng.permutation(pages)[:n]
    runs = [
        (base_l + int(s) * page, base_r + int(d) * page, page)
        for s, d in zip(src, dst, strict=True)
    ]
    rng.shuffle(runs)
    return runs


@pytest.mark.parametrize("seed", range(20))
def test_numpy_coalescing_equals_the_python_definition(seed):
    from pdcore.disaggregation import runs as run_table

    rng = np.random.default_rng(seed)
    page, pages = 4096, 64
    local = [MemoryRegion(1 << 20, 32 * page), MemoryRegion((1 << 20) + 32 * page, 32 * page)]
    remote = [MemoryRegion(1 << 30, 16 * page), MemoryRegion((1 << 30) + 16 * page, 48 * page)]
    runs = _random_runs(rng, int(rng.integers(1, pages)), page, pages, 1 << 20, 1 << 30)
    runs.append((1 << 20, 1 << 30, 0))  # an empty run is dropped by both
    fast = run_table.coalesce(
        run_table.as_table(runs), [r.addr for r in local], [r.addr for r in remote]
    )
    assert [tuple(r) for r in fast.tolist()] == coalesce_runs(runs, local, remote)


def test_numpy_bounds_check_flags_exactly_the_runs_outside():
    from pdcore.disaggregation import runs as run_table

    regions = [MemoryRegion(1000, 100), MemoryRegion(5000, 50)]
    addrs = np.array([1000, 1050, 1099, 999, 5000, 5040, 4000], dtype=np.int64)
    lengths = np.array([100, 50, 2, 1, 50, 11, 10], dtype=np.int64)
    got = run_table.inside(addrs, lengths, regions).tolist()
    want = [
        any(r.contains(int(a), int(n)) for r in regions)
        for a, n in zip(addrs, lengths, strict=True)
    ]
    assert got == want == [True, True, False, False, True, False, False]


def test_runs_beyond_int64_take_the_exact_path_and_are_refused(engine_and_bufs):
    eng, src, _dst, peer = engine_and_bufs
    with pytest.raises(TransferError, match="outside the memory"):
        eng.write(peer, [(src.ctypes.data, (1 << 64) - 16, 8)])
