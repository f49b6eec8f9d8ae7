"""pdcore-transfer-ascend: entry-point registration, honest check, nothing heavy imported."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
from pdcore_transfer_ascend.plugin import check

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig
from pdcore.platform import MemoryKind
from pdcore.registry import Registry

HAS_MF = any(importlib.util.find_spec(m) for m in ("mf_adapter", "memfabric_hybrid"))


def test_registers_through_entry_point():
    reg = Registry.discover(env={})
    found = reg.lookup("transfer", "ascend")
    assert (found.provider.distribution, found.provider.plugin) == (
        "pdcore-transfer-ascend",
        "ascend-transfer",
    )
    assert found.spec.memory_kinds == (MemoryKind.NPU,)
    assert found.spec.check is check
    assert not [x for x in reg.problems if x.provider.distribution == "pdcore-transfer-ascend"]


@pytest.mark.skipif(HAS_MF, reason="memfabric's binding is installed here")
def test_missing_mf_adapter_is_the_reason():
    avail = check()
    assert not avail.ok
    assert avail.reason == (
        "mf_adapter not importable: No module named 'mf_adapter' "
        "(memfabric_hybrid: No module named 'memfabric_hybrid'); "
        "install the mf_adapter wheel from your CANN/memfabric release, or memfabric-hybrid"
    )


def test_missing_torch_npu_is_the_reason(mf, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    avail = check()
    assert not avail.ok
    assert avail.reason.startswith("torch_npu not importable: import of torch_npu halted")


def test_plugin_import_and_discovery_load_no_native_library():
    code = (
        "import sys, pdcore_transfer_ascend.plugin; "
        "from pdcore.registry import Registry; "
        "Registry.discover(env={}).get('transfer', 'ascend'); "
        "heavy = ('mf_adapter', 'memfabric_hybrid', '_pymf_transfer', 'torch_npu', 'torch'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _npu_ready() -> bool:
    return HAS_MF and check().ok


@pytest.mark.npu
@pytest.mark.slow
@pytest.mark.skipif(not _npu_ready(), reason="needs an Ascend NPU with mf_adapter and torch_npu")
def test_real_engine_registers_npu_memory(monkeypatch):
    """One prefill engine on NPU 0 against a config store started here (~10 s: memfabric
    sleeps after initialize)."""
    import socket

    import torch
    from pdcore_transfer_ascend.engine import AscendTransferEngine
    from pdcore_transfer_ascend.native import FALLBACK, PRIMARY

    mf = importlib.import_module(PRIMARY if importlib.util.find_spec(PRIMARY) else FALLBACK)

    url = os.environ.get("ASCEND_MF_STORE_URL")
    if not url:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        assert mf.create_config_store(url) == 0
        monkeypatch.setenv("ASCEND_MF_STORE_URL", url)
    buf = torch.zeros(4 << 20, dtype=torch.uint8, device="npu:0")
    config = TransferConfig(role="prefill", memory_kind=MemoryKind.NPU, device_id=0)
    with AscendTransferEngine(config) as engine:
        engine.register([MemoryRegion(buf.data_ptr(), buf.numel(), MemoryKind.NPU, 0)])
        assert engine.metadata()["agent"]["store_url"] == url
        assert [r.addr for r in engine.regions] == [buf.data_ptr()]
