"""Fixture ``mf``: a stand-in for memfabric's ``mf_adapter``, installed via ``sys.modules``.

It records every call and returns scripted codes. Signatures and the
``TransferEngine.TransDataOpType`` values follow the pybind definitions in
Ascend/memfabric_hybrid ``src/smem/csrc/python_wrapper/mk_transfer_adapter/csrc/pytransfer.cpp``.
"""

from __future__ import annotations

import enum
import sys
import threading
import types

import pytest


class TransDataOpType(enum.IntEnum):
    SDMA = 1
    DEVICE_RDMA = 8


class FakeMf:
    """One fake module; ``codes[method]`` (an int, or an exception to raise) scripts a call."""

    STORE_URL = "tcp://10.0.0.1:24667"
    RPC_PORT = 23456
    OpType = TransDataOpType

    def __init__(self, name: str = "mf_adapter"):
        self.calls: list[tuple] = []
        self.codes: dict[str, object] = {}
        self.gate = threading.Event()  # clear it to hold transfers until it is set
        self.gate.set()
        fake = self

        class TransferEngine:
            def __init__(self):
                fake.calls.append(("TransferEngine",))

            def get_rpc_port(self):
                fake.calls.append(("get_rpc_port",))
                return fake.RPC_PORT

            def initialize(self, store_url, session_id, role, device_id, data_op_type=None):
                return fake.record(
                    "initialize", store_url, session_id, role, device_id, data_op_type
                )

            def batch_register_memory(self, buffer_addrs, capacities):
                return fake.record("batch_register_memory", buffer_addrs, capacities)

            def unregister_memory(self, buffer_addr):
                return fake.record("unregister_memory", buffer_addr)

            def batch_transfer_sync_write(self, dest_session, buffers, peer_buffers, lengths):
                fake.gate.wait(10)
                return fake.record(
                    "batch_transfer_sync_write", dest_session, buffers, peer_buffers, lengths
                )

            def destroy(self):
                fake.calls.append(("destroy",))

        def create_config_store(store_url):
            return fake.record("create_config_store", store_url)

        TransferEngine.TransDataOpType = TransDataOpType
        self.module = types.ModuleType(name)
        self.module.TransferEngine = TransferEngine
        self.module.create_config_store = create_config_store

    def record(self, method: str, *args):
        self.calls.append((method, *args))
        outcome = self.codes.get(method, 0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def mf(monkeypatch):
    """The fake installed as ``mf_adapter``, with a valid store URL and default protocol."""
    fake = FakeMf()
    monkeypatch.setitem(sys.modules, "mf_adapter", fake.module)
    monkeypatch.setenv("ASCEND_MF_STORE_URL", fake.STORE_URL)
    monkeypatch.delenv("ASCEND_MF_TRANSFER_PROTOCOL", raising=False)
    for name in ("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE", "PDCORE_ASCEND_MF_CREATE_STORE"):
        monkeypatch.delenv(name, raising=False)
    return fake


@pytest.fixture
def ascend_driver(tmp_path, monkeypatch):
    """An Ascend driver layout memfabric accepts: ``<root>/driver/{lib64,version.info}``
    with ``lib64`` on LD_LIBRARY_PATH. Returns the root."""
    driver = tmp_path / "Ascend" / "driver"
    (driver / "lib64").mkdir(parents=True)
    (driver / "version.info").write_text("Version=stand-in\n")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/other/lib:{driver / 'lib64'}")
    return driver.parent
