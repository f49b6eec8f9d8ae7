"""The ascend engine against a fake mf_adapter: env validation, call order, error mapping."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from pdcore_transfer_ascend.engine import AscendTransferEngine

from pdcore.disaggregation.transfer import (
    MemoryRegion,
    TransferConfig,
    TransferError,
    TransferStatus,
)
from pdcore.platform import MemoryKind

NPU = MemoryKind.NPU
LOCAL_A = MemoryRegion(0x7F0000000000, 1 << 20, NPU, 3)
LOCAL_B = MemoryRegion(0x7F0000200000, 1 << 20, NPU, 3)
REMOTE = 0x7E0000000000
PEER = "10.0.0.9:30000"


def make_engine(role="prefill", hostname="10.0.0.2", **options) -> AscendTransferEngine:
    config = TransferConfig(
        role=role, hostname=hostname, memory_kind=NPU, device_id=3, options=options
    )
    return AscendTransferEngine(config)


def peer_metadata(mf, session=PEER, **agent) -> dict:
    agent = {"session_id": session, "store_url": mf.STORE_URL, "protocol": "sdma", **agent}
    region = MemoryRegion(REMOTE, 4 << 20, NPU, 0)
    return {"engine": "ascend", "agent": agent, "regions": [region.to_dict()]}


def connected(mf, **options):
    engine = make_engine(**options)
    engine.register([LOCAL_A, LOCAL_B])
    return engine, engine.connect(peer_metadata(mf))


# ---- environment -------------------------------------------------------------


def test_store_url_is_required(mf, monkeypatch):
    monkeypatch.delenv("ASCEND_MF_STORE_URL")
    with pytest.raises(TransferError, match="ASCEND_MF_STORE_URL is not set"):
        make_engine()
    assert mf.calls == []  # refused before touching the native library


@pytest.mark.parametrize("value", ["tcp", "rdma", "hccs"])
def test_unknown_protocol_lists_the_choices(mf, monkeypatch, value):
    monkeypatch.setenv("ASCEND_MF_TRANSFER_PROTOCOL", value)
    with pytest.raises(TransferError) as err:
        make_engine()
    msg = str(err.value)
    assert f"ASCEND_MF_TRANSFER_PROTOCOL={value!r}" in msg
    assert "sdma, device_rdma" in msg
    assert mf.calls == []


@pytest.mark.parametrize(
    ("value", "op"), [(None, "SDMA"), ("sdma", "SDMA"), ("DEVICE_RDMA", "DEVICE_RDMA")]
)
def test_protocol_selects_trans_op_type(mf, monkeypatch, value, op):
    if value is not None:
        monkeypatch.setenv("ASCEND_MF_TRANSFER_PROTOCOL", value)
    make_engine()
    assert mf.calls[2][-1] is mf.OpType[op]


def test_unknown_role_is_refused(mf):
    with pytest.raises(TransferError, match="role must be one of prefill, decode"):
        make_engine(role="router")


def test_dram_is_refused(mf):
    with pytest.raises(TransferError, match="cannot move DRAM memory"):
        AscendTransferEngine(TransferConfig(role="prefill"))


def test_bad_thread_count_is_refused(mf):
    with pytest.raises(TransferError, match="transfer_threads"):
        make_engine(transfer_threads=0)


# ---- the native calls ----------------------------------------------------------


def test_calls_in_order(mf):
    engine, peer = connected(mf)
    runs = [
        (LOCAL_A.addr, REMOTE, 256),
        (LOCAL_A.addr + 256, REMOTE + 256, 256),  # contiguous with the first: coalesced
        (LOCAL_B.addr, REMOTE + (1 << 20), 128),
    ]
    handle = engine.write(peer, runs)
    handle.wait(5)
    handle.release()
    engine.close()
    assert mf.calls == [
        ("TransferEngine",),
        ("get_rpc_port",),
        ("initialize", mf.STORE_URL, "10.0.0.2:23456", "Prefill", 3, mf.OpType.SDMA),
        ("batch_register_memory", [LOCAL_A.addr, LOCAL_B.addr], [1 << 20, 1 << 20]),
        (
            "batch_transfer_sync_write",
            PEER,
            [LOCAL_A.addr, LOCAL_B.addr],
            [REMOTE, REMOTE + (1 << 20)],
            [512, 128],
        ),
        ("unregister_memory", LOCAL_A.addr),
        ("unregister_memory", LOCAL_B.addr),
        ("destroy",),
    ]
    assert engine.inflight() == 0


def test_decode_side_and_metadata_round_trip(mf):
    prefill = make_engine()
    decode = make_engine(role="decode", hostname="10.0.0.9")
    decode.register([MemoryRegion(REMOTE, 4 << 20, NPU, 3)])
    assert mf.calls[5][3] == "Decode"
    assert prefill.connect(decode.metadata()) == "10.0.0.9:23456"


def test_ipv6_session_id_is_bracketed(mf):
    assert make_engine(hostname="fd00::2").session_id == "[fd00::2]:23456"


def test_memfabric_hybrid_serves_when_mf_adapter_is_absent(mf, monkeypatch):
    monkeypatch.setitem(sys.modules, "mf_adapter", None)
    monkeypatch.setitem(sys.modules, "memfabric_hybrid", mf.module)
    make_engine()
    assert mf.names()[:3] == ["TransferEngine", "get_rpc_port", "initialize"]


def test_missing_library_is_a_transfer_error(mf, monkeypatch):
    monkeypatch.setitem(sys.modules, "mf_adapter", None)
    monkeypatch.setitem(sys.modules, "memfabric_hybrid", None)
    with pytest.raises(TransferError, match="mf_adapter not importable"):
        make_engine()


# ---- return codes -> TransferError ----------------------------------------------


def test_initialize_failure_names_call_and_code(mf):
    mf.codes["initialize"] = -1
    with pytest.raises(TransferError) as err:
        make_engine()
    msg = str(err.value)
    assert msg.startswith("mf_adapter initialize(store_url='tcp://10.0.0.1:24667'")
    assert "role='Prefill', device_id=3, data_op_type=SDMA" in msg
    assert msg.endswith(
        "failed with return code -1 (generic failure (SMEM_ERROR / BM_ERROR); "
        "memfabric's log has the cause)"
    )


def test_register_failure_registers_nothing(mf):
    engine = make_engine()
    mf.codes["batch_register_memory"] = -3
    with pytest.raises(TransferError, match=r"batch_register_memory\(2 region\(s\), 2097152 "):
        engine.register([LOCAL_A, LOCAL_B])
    assert engine.regions == []


def test_transfer_failure_names_call_and_code(mf):
    engine, peer = connected(mf)
    mf.codes["batch_transfer_sync_write"] = -2014
    handle = engine.write(peer, [(LOCAL_A.addr, REMOTE, 64)])
    with pytest.raises(TransferError) as err:
        handle.wait(5)
    assert handle.status() is TransferStatus.FAILED
    assert str(err.value) == (
        f"ascend transfer to {PEER} failed: mf_adapter batch_transfer_sync_write("
        f"dest_session='{PEER}', 1 run(s), 64 bytes) failed with return code -2014 "
        "(not connected (SMEM_NOT_CONNECTED))"
    )


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (-7, "timed out (BM_TIMEOUT)"),
        (-2000, "invalid parameter (SMEM_INVALID_PARAM)"),
        (-3005, "config store: no such entry (SMEM_STORE_BACKEND_CODE_NOENT)"),
        (-4242, "unknown to pdcore; see memfabric's log (ASCEND_MF_LOG_LEVEL=0)"),
    ],
)
def test_return_codes_are_named(mf, code, meaning):
    mf.codes["initialize"] = code
    with pytest.raises(TransferError) as err:
        make_engine()
    assert str(err.value).endswith(f"failed with return code {code} ({meaning})")


def test_native_exception_becomes_failure(mf):
    engine, peer = connected(mf)
    mf.codes["batch_transfer_sync_write"] = RuntimeError("link down")
    handle = engine.write(peer, [(LOCAL_A.addr, REMOTE, 64)])
    with pytest.raises(TransferError, match="raised RuntimeError: link down"):
        handle.wait(5)


def test_unregister_failure_is_reported(mf):
    engine = make_engine()
    engine.register([LOCAL_A])
    mf.codes["unregister_memory"] = 5
    with pytest.raises(TransferError, match=r"unregister_memory\(0x7f0000000000\).*code 5 "):
        engine.deregister([LOCAL_A])


# ---- asynchrony ---------------------------------------------------------------------


def test_status_does_not_block_on_a_running_batch(mf):
    engine, peer = connected(mf)
    mf.gate.clear()
    handle = engine.write(peer, [(LOCAL_A.addr, REMOTE, 64)])
    start = time.monotonic()
    assert handle.status() is TransferStatus.PENDING
    assert time.monotonic() - start < 0.5
    mf.gate.set()
    handle.wait(5)
    assert handle.status() is TransferStatus.DONE


def test_close_waits_for_running_batch_before_unregistering(mf):
    engine, peer = connected(mf)
    mf.gate.clear()
    engine.write(peer, [(LOCAL_A.addr, REMOTE, 64)])
    closer = threading.Thread(target=engine.close)
    closer.start()
    time.sleep(0.2)
    assert "unregister_memory" not in mf.names()
    mf.gate.set()
    closer.join(5)
    names = mf.names()
    assert names.index("batch_transfer_sync_write") < names.index("unregister_memory")
    assert names[-1] == "destroy"


# ---- peers ----------------------------------------------------------------------------


def test_peer_on_another_store_is_refused(mf):
    engine = make_engine()
    with pytest.raises(TransferError, match="share one ASCEND_MF_STORE_URL"):
        engine.connect(peer_metadata(mf, store_url="tcp://10.9.9.9:1"))


def test_peer_with_other_protocol_is_refused(mf):
    engine = make_engine()
    with pytest.raises(TransferError, match="same protocol"):
        engine.connect(peer_metadata(mf, protocol="device_rdma"))


def test_malformed_peer_is_refused(mf):
    engine = make_engine()
    with pytest.raises(TransferError, match="malformed ascend peer metadata"):
        engine.connect({"engine": "ascend", "agent": ["10.0.0.9:1"], "regions": []})
