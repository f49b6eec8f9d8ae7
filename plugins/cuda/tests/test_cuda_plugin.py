"""pdcore-cuda: entry-point registration, honest availability reasons, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pdcore_cuda.platform import CudaPlatform

from pdcore.platform import MemoryKind
from pdcore.registry import Registry
from pdcore.testing import AttentionBackendSuite

HAS_GPU = torch.version.cuda is not None and torch.cuda.device_count() > 0


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_registers_through_entry_point():
    reg = Registry.discover(env={})
    found = reg.lookup("platform", "cuda")
    assert (found.provider.distribution, found.provider.plugin) == ("pdcore-cuda", "cuda")
    p = found.spec
    assert isinstance(p, CudaPlatform)
    assert (p.device_type, p.dist_backend, p.memory_kind, p.priority) == (
        "cuda",
        "nccl",
        MemoryKind.VRAM,
        100,
    )
    assert p.visible_devices_env == "CUDA_VISIBLE_DEVICES"
    assert not [x for x in reg.problems if x.provider.distribution == "pdcore-cuda"]


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch here is a CUDA build")
def test_cpu_torch_build_is_the_reason():
    avail = CudaPlatform().availability()
    assert not avail.ok
    assert avail.reason == f"torch built without CUDA (torch {torch.__version__})"


@pytest.fixture
def cuda_build_without_devices(monkeypatch):
    """A CUDA build of torch that sees no device; tests say why through torch.cuda.init."""
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return monkeypatch


def test_empty_visible_devices_is_the_reason(cuda_build_without_devices):
    mp = cuda_build_without_devices
    mp.setenv("CUDA_VISIBLE_DEVICES", "")
    mp.setattr(torch.cuda, "init", _raise(RuntimeError("No CUDA GPUs are available")))
    avail = CudaPlatform().availability()
    assert (avail.ok, avail.reason) == (False, "no CUDA device visible (CUDA_VISIBLE_DEVICES='')")


def test_driver_error_is_the_reason(cuda_build_without_devices):
    mp = cuda_build_without_devices
    mp.setenv("CUDA_VISIBLE_DEVICES", "0")  # set, but not what hides the GPU
    mp.setattr(torch.cuda, "init", _raise(RuntimeError("Found no NVIDIA driver on your system.")))
    avail = CudaPlatform().availability()
    assert avail.reason == "CUDA driver error: Found no NVIDIA driver on your system."


def test_device_count_failure_is_a_driver_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", _raise(RuntimeError("CUDA error: 999")))
    assert CudaPlatform().availability().reason == "CUDA driver error: CUDA error: 999"


def test_visible_devices_reported(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    avail = CudaPlatform().availability()
    assert avail.ok and avail.reason == "2 device(s), CUDA 12.8"


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_only_where_supported(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    p = CudaPlatform()
    assert ("bfloat16" in p.supported_dtypes()) is bf16
    assert p.default_dtype() == ("bfloat16" if bf16 else "float16")


@pytest.mark.skipif(HAS_GPU, reason="checks the answer without a GPU")
def test_no_bf16_without_gpu():
    assert CudaPlatform().supported_dtypes() == ("float32", "float16")


def test_plugin_import_loads_no_torch_or_kernels():
    code = (
        "import sys, pdcore_cuda.plugin; "
        "print(sorted(m for m in ('torch', 'flashinfer', 'triton') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_real_gpu_memory_and_devices():
    p = CudaPlatform()
    assert p.availability().ok
    n = p.device_count()
    assert n == torch.cuda.device_count() >= 1
    for i in range(n):
        info = p.memory_info(i)
        assert 0 < info.free_bytes <= info.total_bytes
        total = torch.cuda.get_device_properties(i).total_memory
        assert abs(info.total_bytes - total) <= total // 100
    p.set_device(n - 1)
    assert torch.cuda.current_device() == n - 1
    p.set_device(0)
    before = p.memory_info(0).free_bytes
    block = torch.empty(512 << 20, dtype=torch.uint8, device=p.torch_device(0))
    assert p.memory_info(0).free_bytes <= before - (512 << 20)
    del block
    native_bf16 = torch.cuda.get_device_capability(0)[0] >= 8
    assert ("bfloat16" in p.supported_dtypes()) is native_bf16


def test_triton_attention_registers_for_cuda_only_and_says_why_not_here():
    reg = Registry.discover(env={})
    found = reg.lookup("attention", "triton")
    assert found.provider.distribution == "pdcore-cuda"
    assert found.spec.platforms == ("cuda",)
    availability = found.spec.check()
    if not HAS_GPU:
        assert not availability.ok and "CUDA" in availability.reason, availability


@pytest.mark.gpu
class TestTritonAttentionBf16(AttentionBackendSuite):
    backend_name = "triton"
    device = "cuda"
    dtype = "bfloat16"
    page_sizes = (1, 16, 64)
    atol = 3e-2
    rtol = 3e-2


@pytest.mark.gpu
class TestTritonAttentionFloat32(AttentionBackendSuite):
    backend_name = "triton"
    device = "cuda"
    dtype = "float32"
    page_sizes = (16,)
    atol = 1e-3
    rtol = 1e-3


def test_flashinfer_is_the_prefill_default_and_triton_the_decode_default():
    """Measured on an H100 (BENCHMARKS.md): FlashInfer's prefill is the faster,
    Triton's graph-captured decode the faster at batch 1."""
    reg = Registry.discover(env={})
    flashinfer = reg.get("attention", "flashinfer")
    triton = reg.get("attention", "triton")
    assert flashinfer.priority_for("prefill") > triton.priority_for("prefill")
    assert flashinfer.priority_for("decode") < triton.priority_for("decode")


def test_flashinfer_declares_what_it_refuses():
    """So the default passes it over for float32 or a head_dim it has no kernel for."""
    flashinfer = Registry.discover(env={}).get("attention", "flashinfer")
    assert flashinfer.refuses("bfloat16", 128) is None
    assert "float32" in flashinfer.refuses("float32", 128)
    assert "not 32" in flashinfer.refuses("bfloat16", 32)


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, True),
        ({"SGLANG_FLASHINFER_USE_TENSOR_CORE": "false"}, False),
        (
            {"PDCORE_FLASHINFER_USE_TENSOR_CORE": "true", "SGLANG_FLASHINFER_USE_TENSOR_CORE": "0"},
            True,
        ),
    ],
)
def test_flashinfer_tensor_core_decode_follows_sglang_variable(env, want):
    from pdcore_cuda.flashinfer_options import use_tensor_cores

    assert use_tensor_cores(32, 8, env) is want  # GQA group 4: tensor cores by default


def test_flashinfer_tensor_core_variable_must_be_a_boolean():
    from pdcore_cuda.flashinfer_options import use_tensor_cores

    with pytest.raises(ValueError, match="SGLANG_FLASHINFER_USE_TENSOR_CORE must be true or false"):
        use_tensor_cores(32, 8, {"SGLANG_FLASHINFER_USE_TENSOR_CORE": "maybe"})
