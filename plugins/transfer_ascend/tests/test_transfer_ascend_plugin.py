"""pdcore-transfer-ascend: entry-point registration, honest check, nothing heavy imported."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch
from pdcore_transfer_ascend.native import driver_problem
from pdcore_transfer_ascend.plugin import check
from pdcore_transfer_ascend.unverified import UNVERIFIED

from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig
from pdcore.hookspecs import Availability
from pdcore.platform import MemoryKind
from pdcore.registry import Registry

HAS_MF = any(importlib.util.find_spec(m) for m in ("mf_adapter", "memfabric_hybrid"))
HAS_TORCH_NPU = importlib.util.find_spec("torch_npu") is not None


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


@pytest.fixture
def npu_visible(monkeypatch):
    """torch_npu importable and one NPU visible (no hardware: the answers are scripted)."""
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(device_count=lambda: 1), raising=False)


@pytest.mark.skipif(HAS_MF or HAS_TORCH_NPU, reason="memfabric or torch_npu is installed here")
def test_every_missing_library_is_a_reason():
    avail = check()
    assert not avail.ok
    assert avail.reason == (
        "mf_adapter not importable: No module named 'mf_adapter' "
        "(memfabric_hybrid: No module named 'memfabric_hybrid'); "
        "install the mf_adapter wheel from your CANN/memfabric release, or memfabric-hybrid; "
        "torch_npu not importable: No module named 'torch_npu'; the ascend engine moves NPU "
        f"memory [{UNVERIFIED}]"
    )


def test_mf_adapter_without_a_driver_is_the_reason(mf, npu_visible, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    avail = check()
    assert not avail.ok
    assert avail.reason == (
        "mf_adapter: Ascend driver does not support mf: LD_LIBRARY_PATH is not set, so "
        "memfabric cannot find the driver (source /usr/local/Ascend/ascend-toolkit/set_env.sh) "
        f"[{UNVERIFIED}]"
    )


def test_missing_torch_npu_is_the_reason(mf, ascend_driver, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    avail = check()
    assert not avail.ok
    assert avail.reason.startswith("torch_npu not importable: import of torch_npu halted")


def test_library_driver_and_npu_present_is_available(mf, ascend_driver, npu_visible):
    assert check() == Availability.yes(f"memfabric [{UNVERIFIED}]")


def test_mooncake_switch_checks_mooncake_instead_of_memfabric(npu_visible, monkeypatch):
    monkeypatch.setenv("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE", "true")
    monkeypatch.setitem(sys.modules, "pdcore_transfer_mooncake.engine", None)
    avail = check()
    assert not avail.ok
    assert avail.reason.startswith("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true but Mooncake is ")
    assert "mf_adapter not importable" not in avail.reason
    assert "Ascend driver" not in avail.reason


def test_malformed_mooncake_switch_is_the_reason(npu_visible, monkeypatch):
    monkeypatch.setenv("ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE", "maybe")
    assert check().reason == (
        f"ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE='maybe' is not a boolean; use true or false "
        f"[{UNVERIFIED}]"
    )


# ---- memfabric's driver lookup, repeated without initializing anything ------------------


def test_driver_found_through_ld_library_path(tmp_path):
    (tmp_path / "driver" / "lib64").mkdir(parents=True)
    (tmp_path / "driver" / "version.info").write_text("Version=1\n")
    env = {"LD_LIBRARY_PATH": f"/usr/lib:{tmp_path}/driver/lib64/driver"}
    assert driver_problem(env) is None


@pytest.mark.parametrize(
    ("ld_path", "problem"),
    [
        ("", "LD_LIBRARY_PATH is not set"),
        ("/usr/lib:/opt/cann/lib64", "no Ascend driver directory (*/driver/lib64)"),
        ("/nowhere/driver/lib64", "/nowhere/driver/version.info does not exist"),
    ],
    ids=["unset", "no-driver-entry", "no-version-file"],
)
def test_driver_problems_are_named(ld_path, problem):
    assert driver_problem({"LD_LIBRARY_PATH": ld_path}).startswith(problem)


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
    import torch
    from pdcore_transfer_ascend.engine import AscendTransferEngine
    from pdcore_transfer_ascend.native import FALLBACK, PRIMARY

    from pdcore.up.ports import pick_port

    mf = importlib.import_module(PRIMARY if importlib.util.find_spec(PRIMARY) else FALLBACK)

    url = os.environ.get("ASCEND_MF_STORE_URL")
    if not url:
        url = f"tcp://127.0.0.1:{pick_port()}"
        assert mf.create_config_store(url) == 0
        monkeypatch.setenv("ASCEND_MF_STORE_URL", url)
    buf = torch.zeros(4 << 20, dtype=torch.uint8, device="npu:0")
    config = TransferConfig(role="prefill", memory_kind=MemoryKind.NPU, device_id=0)
    with AscendTransferEngine(config) as engine:
        engine.register([MemoryRegion(buf.data_ptr(), buf.numel(), MemoryKind.NPU, 0)])
        assert engine.metadata()["agent"]["store_url"] == url
        assert [r.addr for r in engine.regions] == [buf.data_ptr()]
