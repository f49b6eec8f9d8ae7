"""pdcore-ascend: entry-point registration, honest availability reasons, lazy imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
import torch
from pdcore_ascend.platform import AscendPlatform
from pdcore_ascend.unverified import UNVERIFIED

from pdcore.platform import MemoryKind
from pdcore.registry import Registry

HAS_TORCH_NPU = importlib.util.find_spec("torch_npu") is not None


def _has_npu() -> bool:
    return AscendPlatform().availability().ok if HAS_TORCH_NPU else False


def test_registers_through_entry_point():
    reg = Registry.discover(env={})
    found = reg.lookup("platform", "npu")
    assert (found.provider.distribution, found.provider.plugin) == ("pdcore-ascend", "ascend")
    p = found.spec
    assert isinstance(p, AscendPlatform)
    assert (p.device_type, p.dist_backend, p.memory_kind, p.priority) == (
        "npu",
        "hccl",
        MemoryKind.NPU,
        90,
    )
    assert p.visible_devices_env == "ASCEND_RT_VISIBLE_DEVICES"
    assert not [x for x in reg.problems if x.provider.distribution == "pdcore-ascend"]


@pytest.mark.parametrize(
    ("name", "kind", "priority"), [("ascend", "mha", 10), ("ascend-mla", "mla", -10)]
)
def test_attention_backends_register_with_their_kv_layout(name, kind, priority):
    reg = Registry.discover(env={})
    found = reg.lookup("attention", name)
    assert found.provider.distribution == "pdcore-ascend"
    spec = found.spec
    assert spec.platforms == ("npu",)
    assert (spec.kv_layout.kind, spec.kv_layout.cache_layout) == (kind, "NHD")
    assert spec.kv_layout.page_sizes == (16, 32, 64, 128)
    assert spec.priority == priority


def test_attention_is_unavailable_for_the_platform_reason():
    reg = Registry.discover(env={})
    avail = reg.availability(reg.lookup("attention", "ascend"))
    platform = AscendPlatform().availability()
    if platform.ok:
        pytest.skip("an NPU is available here")
    assert not avail.ok
    assert avail.reason == f"needs an Ascend NPU: {platform.reason}"
    assert avail.reason.endswith(f"[{UNVERIFIED}]"), "pdcore plugins says it never ran on an NPU"


def test_npu_picks_the_ascend_backend_over_torch(fake_npu):
    reg = Registry.discover(env={})
    platform = reg.select_platform("npu")
    assert reg.select_attention(None, platform).name == "ascend"


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch_npu is installed here")
def test_missing_torch_npu_is_the_reason():
    avail = AscendPlatform().availability()
    assert (avail.ok, avail.reason) == (
        False,
        f"torch_npu: No module named 'torch_npu' [{UNVERIFIED}]",
    )


@pytest.fixture
def broken_torch_npu(tmp_path, monkeypatch):
    """Put a ``torch_npu`` first on sys.path whose import fails the way the test says."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(statement: str):
        (tmp_path / "torch_npu.py").write_text(statement + "\n")

    return make


def test_missing_cann_library_is_the_reason(broken_torch_npu):
    broken_torch_npu(
        "raise OSError('libhccl.so: cannot open shared object file: No such file or directory')"
    )
    avail = AscendPlatform().availability()
    assert avail.reason == (
        "torch_npu: libhccl.so: cannot open shared object file: No such file or directory "
        f"[{UNVERIFIED}]"
    )


def test_version_mismatch_is_the_reason(broken_torch_npu):
    broken_torch_npu("raise RuntimeError('torch_npu 2.8.0 needs torch 2.8.0')")
    avail = AscendPlatform().availability()
    assert avail.reason == (
        f"torch_npu: RuntimeError: torch_npu 2.8.0 needs torch 2.8.0 [{UNVERIFIED}]"
    )


@pytest.fixture
def fake_npu(monkeypatch):
    """torch_npu importable and ``torch.npu`` answering like the real API, with no hardware."""
    calls = []
    npu = types.SimpleNamespace(
        count=2,
        device_count=lambda: npu.count,
        mem_get_info=lambda i: calls.append(("mem_get_info", i)) or (3 << 30, 64 << 30),
        set_device=lambda i: calls.append(("set_device", i)),
        is_bf16_supported=lambda: True,
        calls=calls,
    )
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    return npu


def test_no_visible_npu_is_the_reason(fake_npu, monkeypatch):
    fake_npu.count = 0
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    avail = AscendPlatform().availability()
    assert (avail.ok, avail.reason) == (
        False,
        f"no NPU visible (ASCEND_RT_VISIBLE_DEVICES='') [{UNVERIFIED}]",
    )


def test_calls_go_through_torch_npu(fake_npu):
    p = AscendPlatform()
    assert p.availability().ok
    assert p.device_count() == 2
    info = p.memory_info(1)
    assert (info.free_bytes, info.total_bytes) == (3 << 30, 64 << 30)
    p.set_device(1)
    assert fake_npu.calls == [("mem_get_info", 1), ("set_device", 1)]
    assert p.default_dtype() == "bfloat16"
    fake_npu.is_bf16_supported = lambda: False
    assert p.supported_dtypes() == ("float32", "float16")


def test_plugin_import_loads_no_torch_or_torch_npu():
    code = (
        "import sys, pdcore_ascend.plugin; "
        "from pdcore.registry import Registry; "
        "Registry.discover(env={}).get('attention', 'ascend'); "
        "print(sorted(m for m in ('torch', 'torch_npu') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.npu
@pytest.mark.skipif(not _has_npu(), reason="needs an Ascend NPU with torch_npu")
def test_real_npu_memory_and_devices():
    p = AscendPlatform()
    n = p.device_count()
    assert n >= 1
    for i in range(n):
        info = p.memory_info(i)
        assert 0 < info.free_bytes <= info.total_bytes
    p.set_device(0)
    before = p.memory_info(0).free_bytes
    block = torch.empty(512 << 20, dtype=torch.uint8, device=p.torch_device(0))
    assert block.device.type == "npu"
    assert p.memory_info(0).free_bytes <= before - (512 << 20)
