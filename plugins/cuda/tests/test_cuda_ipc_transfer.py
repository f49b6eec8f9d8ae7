"""``cuda_ipc`` transfer backend: registration everywhere; real copies between two
processes on a GPU host (the receiver uses GPU 1 when there are two)."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    TransferConfig,
    TransferError,
    TransferStatus,
)
from pdcore.platform import MemoryKind
from pdcore.registry import Registry

HAS_GPU = torch.version.cuda is not None and torch.cuda.device_count() > 0
PAGE = 4096
PAGES = 256


def test_registers_as_a_vram_only_transfer_backend():
    reg = Registry.discover(env={})
    found = reg.lookup("transfer", "cuda_ipc")
    assert found.provider.distribution == "pdcore-cuda"
    assert found.spec.memory_kinds == (MemoryKind.VRAM,)


@pytest.mark.skipif(HAS_GPU, reason="checks the reason given on machines without a GPU")
def test_unavailable_without_a_gpu_says_why():
    spec = Registry.discover(env={}).lookup("transfer", "cuda_ipc").spec
    avail = spec.check()
    assert not avail.ok and "needs a CUDA device" in avail.reason, avail.reason


# ---- on a GPU ---------------------------------------------------------------------


def _receiver(conn, device: int) -> None:
    """Child: a VRAM buffer registered with its own engine; reports its bytes on request."""
    from pdcore.registry import get_registry

    torch.cuda.set_device(device)
    buf = torch.zeros(PAGES * PAGE, dtype=torch.uint8, device=f"cuda:{device}")
    factory = get_registry().get("transfer", "cuda_ipc").factory
    engine = factory(TransferConfig(role="decode", memory_kind=MemoryKind.VRAM, device_id=device))
    engine.register([MemoryRegion(buf.data_ptr(), buf.numel(), MemoryKind.VRAM, device)])
    conn.send(engine.metadata())
    while conn.recv() != "stop":
        torch.cuda.synchronize(device)
        conn.send(buf.cpu().numpy().tobytes())
    engine.close()


@pytest.fixture(scope="module")
def pair():
    """(engine on GPU 0 with a random source buffer, peer id, child pipe)."""
    from pdcore.registry import get_registry

    dst_device = 1 if torch.cuda.device_count() > 1 else 0
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child, dst_device), daemon=True)
    proc.start()
    assert parent.poll(120), "receiver process did not start within 120 s"
    meta = parent.recv()
    torch.cuda.set_device(0)
    src = torch.randint(0, 255, (PAGES * PAGE,), dtype=torch.uint8, device="cuda:0")
    factory = get_registry().get("transfer", "cuda_ipc").factory
    engine = factory(TransferConfig(role="prefill", memory_kind=MemoryKind.VRAM, device_id=0))
    engine.register([MemoryRegion(src.data_ptr(), src.numel(), MemoryKind.VRAM, 0)])
    peer = engine.connect(meta)
    yield engine, src, peer, parent, meta
    parent.send("stop")
    proc.join(30)
    engine.close()


def _remote_bytes(conn) -> bytes:
    conn.send("read")
    return conn.recv()


@pytest.mark.gpu
def test_scattered_pages_land_at_their_destinations(pair):
    engine, src, peer, conn, meta = pair
    rbase = meta["regions"][0]["addr"]
    mapping = {s: (s * 7 + 3) % PAGES for s in range(0, PAGES, 2)}  # a permutation slice
    runs = [(src.data_ptr() + s * PAGE, rbase + d * PAGE, PAGE) for s, d in mapping.items()]
    h = engine.write(peer, runs)
    h.wait(30)
    h.release()
    got = _remote_bytes(conn)
    host = src.cpu().numpy().tobytes()
    for s, d in mapping.items():
        assert got[d * PAGE : (d + 1) * PAGE] == host[s * PAGE : (s + 1) * PAGE], (
            f"page {s} did not land at {d}"
        )
    assert engine.inflight() == 0


@pytest.mark.gpu
def test_a_copy_ordered_after_pending_work_on_the_current_stream(pair):
    """Pages written by a kernel still queued on the compute stream are what arrives."""
    engine, src, peer, conn, meta = pair
    rbase = meta["regions"][0]["addr"]
    torch.cuda._sleep(50_000_000)  # keep the stream busy, then overwrite page 0
    src[:PAGE].fill_(0xAB)
    h = engine.write(peer, [(src.data_ptr(), rbase, PAGE)])
    h.wait(30)
    h.release()
    assert _remote_bytes(conn)[:PAGE] == b"\xab" * PAGE


@pytest.mark.gpu
def test_remote_range_outside_the_peer_registration_is_refused(pair):
    engine, src, peer, _, meta = pair
    rbase = meta["regions"][0]["addr"]
    with pytest.raises(TransferError, match="outside the memory"):
        engine.write(peer, [(src.data_ptr(), rbase + PAGES * PAGE, PAGE)])


@pytest.mark.gpu
def test_notifications_are_not_supported(pair):
    engine, src, peer, _, meta = pair
    rbase = meta["regions"][0]["addr"]
    with pytest.raises(TransferError, match="does not support notifications"):
        engine.write(peer, [(src.data_ptr(), rbase, PAGE)], notify=b"x")


@pytest.mark.gpu
def test_peer_on_another_host_is_refused_with_a_hint(pair):
    engine, *_, meta = pair
    foreign = {**meta, "agent": {**meta["agent"], "host": "elsewhere/0000"}}
    with pytest.raises(TransferError, match=r"one host.*nixl or mooncake"):
        engine.connect(foreign)


@pytest.mark.gpu
def test_host_memory_cannot_be_registered():
    from pdcore.registry import get_registry

    factory = get_registry().get("transfer", "cuda_ipc").factory
    with pytest.raises(TransferError, match="cannot move DRAM"):
        factory(TransferConfig(role="prefill", memory_kind=MemoryKind.DRAM, device_id=0))


@pytest.mark.gpu
def test_status_is_done_after_wait(pair):
    engine, src, peer, _, meta = pair
    rbase = meta["regions"][0]["addr"]
    h = engine.write(peer, [(src.data_ptr(), rbase, PAGES * PAGE)])
    h.wait(30)
    assert h.status() is TransferStatus.DONE
    h.release()
