"""``ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true``: the ``ascend`` backend is pdcore's
Mooncake engine on Mooncake's ``ascend`` transport, initialized as SGLang does it.

Mooncake is replaced by a recorder (the PyPI wheels have no Ascend transport).
"""

from __future__ import annotations

import re
import types

import pdcore_transfer_mooncake.engine as mooncake_engine
import pytest
from pdcore_transfer_ascend.plugin import _factory

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig, TransferError
from pdcore.platform import MemoryKind

RPC_PORT = 12345


@pytest.fixture
def mooncake(monkeypatch):
    """A recording ``mooncake.engine`` with the switch on; ``calls`` lists native calls."""
    calls = []

    class TransferEngine:
        def initialize(self, hostname, metadata_server, protocol, device_name):
            calls.append(("initialize", hostname, metadata_server, protocol, device_name))
            return 0

        def get_rpc_port(self):
            return RPC_PORT

        def register_memory(self, addr, length):
            calls.append(("register_memory", addr, length))
            return 0

    fake = types.SimpleNamespace(TransferEngine=TransferEngine, calls=calls)
    monkeypatch.setattr(mooncake_engine, "mc", fake)
    monkeypatch.setenv("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE", "true")
    monkeypatch.delenv("ASCEND_NPU_PHY_ID", raising=False)
    return fake


def engine(hostname="10.0.0.2", device_id=3, memory_kind=MemoryKind.NPU):
    config = TransferConfig(
        role="prefill", hostname=hostname, memory_kind=memory_kind, device_id=device_id
    )
    return _factory(config)


def test_initialized_with_an_npu_qualified_name_and_the_ascend_protocol(mooncake):
    built = engine()
    (name, hostname, metadata_server, protocol, device) = mooncake.calls[0]
    assert name == "initialize"
    assert re.fullmatch(r"10\.0\.0\.2:\d+:npu_3", hostname), hostname
    assert (metadata_server, protocol, device) == ("P2PHANDSHAKE", "ascend", "")
    assert built.local_name == hostname


def test_peers_reach_it_at_host_and_rpc_port(mooncake):
    built = engine()
    assert built.name == "ascend"
    assert built.metadata()["engine"] == "ascend"
    assert built.metadata()["agent"] == {"session": f"10.0.0.2:{RPC_PORT}", "protocol": "ascend"}


def test_physical_npu_id_overrides_the_local_index(mooncake, monkeypatch):
    monkeypatch.setenv("ASCEND_NPU_PHY_ID", "7")
    engine(device_id=0)
    assert mooncake.calls[0][1].endswith(":npu_7")


def test_two_sides_connect_and_npu_memory_registers(mooncake):
    prefill, decode = engine(), engine(hostname="10.0.0.9", device_id=0)
    decode.register([MemoryRegion(0x7E0000000000, 1 << 20, MemoryKind.NPU, 0)])
    assert prefill.connect(decode.metadata()) == f"10.0.0.9:{RPC_PORT}"
    assert ("register_memory", 0x7E0000000000, 1 << 20) in mooncake.calls


def test_host_memory_is_refused(mooncake):
    with pytest.raises(TransferError, match="ascend cannot move DRAM memory"):
        engine(memory_kind=MemoryKind.DRAM)


def test_switch_off_builds_the_memfabric_engine(mf):
    from pdcore_transfer_ascend.engine import AscendTransferEngine

    assert isinstance(engine(), AscendTransferEngine)
