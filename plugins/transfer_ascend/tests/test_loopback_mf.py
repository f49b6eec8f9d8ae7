"""The loopback mf_adapter used by the CPU PD test moves real bytes and fails like memfabric.

Two engines in this process talk over TCP exactly as they do across processes:
through the config store, then a connection to the peer's RPC port.
"""

from __future__ import annotations

import numpy as np
import pytest
from pdcore_transfer_ascend.testing import loopback_mf as mf

from pdcore.up.ports import pick_port


def free_url() -> str:
    return f"tcp://127.0.0.1:{pick_port()}"


@pytest.fixture
def store():
    url = free_url()
    assert mf.create_config_store(url) == 0
    return url


def started(store, role, buf) -> mf.TransferEngine:
    engine = mf.TransferEngine()
    session = f"127.0.0.1:{engine.get_rpc_port()}"
    assert engine.initialize(store, session, role, 0, mf.TransDataOpType.SDMA) == 0
    assert engine.batch_register_memory([buf.ctypes.data], [buf.nbytes]) == 0
    engine.session = session
    return engine


@pytest.fixture
def pair(store):
    src = np.arange(4096, dtype=np.uint8)
    dst = np.zeros(4096, dtype=np.uint8)
    prefill, decode = started(store, "Prefill", src), started(store, "Decode", dst)
    yield prefill, decode, src, dst
    prefill.destroy()
    decode.destroy()


def test_batch_write_copies_the_bytes_into_the_peer(pair):
    prefill, decode, src, dst = pair
    a, b = src.ctypes.data, dst.ctypes.data
    ret = prefill.batch_transfer_sync_write(
        decode.session, [a, a + 100], [b + 8, b + 1000], [16, 50]
    )
    assert ret == 0
    assert np.array_equal(dst[8:24], src[0:16])
    assert np.array_equal(dst[1000:1050], src[100:150])
    assert dst[:8].sum() == 0 and dst[24:1000].sum() == 0, "nothing else written"


def test_remote_range_outside_registered_memory_is_refused(pair):
    prefill, decode, src, dst = pair
    end = dst.ctypes.data + dst.nbytes
    ret = prefill.batch_transfer_sync_write(decode.session, [src.ctypes.data], [end - 8], [16])
    assert ret == mf.INVALID_PARAM
    assert dst.sum() == 0


def test_unknown_session_is_refused(pair):
    prefill, _, src, dst = pair
    ret = prefill.batch_transfer_sync_write(
        "127.0.0.1:1", [src.ctypes.data], [dst.ctypes.data], [16]
    )
    assert ret == mf.NOT_EXIST


def test_initialize_without_a_store_fails(store):
    engine = mf.TransferEngine()
    assert engine.initialize(free_url(), "127.0.0.1:9", "Prefill", 0) == mf.NOT_CONNECTED
    assert engine.initialize(store, "127.0.0.1:9", "Router", 0) == mf.INVALID_PARAM
    engine.destroy()


def test_write_before_initialize_fails():
    engine = mf.TransferEngine()
    assert engine.batch_transfer_sync_write("127.0.0.1:1", [1], [1], [1]) == mf.NOT_INIT
    engine.destroy()
