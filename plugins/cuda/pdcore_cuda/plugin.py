"""Entry point ``cuda``: the CUDA platform, its attention backends and ``cuda_ipc`` transfer.

Importing this module imports no torch, Triton or CUDA library: kernels load
inside the factory, availability checks only when asked.
"""

from __future__ import annotations

from pdcore.attention.base import AttentionBackend
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind
from pdcore_cuda import flashinfer_options
from pdcore_cuda.platform import CudaPlatform


def _triton_factory(config):
    from pdcore_cuda.triton_attention import TritonAttention

    return TritonAttention(config)


def _triton_check() -> Availability:
    platform = CudaPlatform().availability()
    if not platform.ok:
        return Availability.no(f"needs a CUDA device: {platform.reason}")
    try:
        import triton
    except ImportError as e:
        return Availability.no(f"triton is not installed ({e}); pip install triton")
    return Availability.yes(f"triton {triton.__version__}")


def _flashinfer_factory(config):
    from pdcore_cuda.flashinfer_attention import FlashInferAttention

    return FlashInferAttention(config)


def _flashinfer_check() -> Availability:
    platform = CudaPlatform().availability()
    if not platform.ok:
        return Availability.no(f"needs a CUDA device: {platform.reason}")
    try:
        import flashinfer
    except ImportError as e:
        return Availability.no(
            f"flashinfer is not installed ({e}); pip install 'pdcore-cuda[flashinfer]'"
        )
    return Availability.yes(f"flashinfer {getattr(flashinfer, '__version__', '?')}")


@hookimpl
def pdcore_platforms():
    return [CudaPlatform()]


@hookimpl
def pdcore_attention_backends():
    return [
        AttentionBackend(
            name="triton",
            factory=_triton_factory,
            platforms=("cuda",),
            check=_triton_check,
            priority=10,
            description="pdcore's Triton paged attention (prefill with prefix, split decode)",
        ),
        # The default for prefill where installed (78% of the bf16 matmul peak on an
        # 8k prefill against triton's 67%, H100). Decode defaults to triton: both run
        # in CUDA graphs, and triton's batch-1 step was 1-2% faster (BENCHMARKS.md).
        AttentionBackend(
            name="flashinfer",
            factory=_flashinfer_factory,
            platforms=("cuda",),
            check=_flashinfer_check,
            priority=20,
            decode_priority=5,
            dtypes=flashinfer_options.SUPPORTED_DTYPES,
            head_dims=flashinfer_options.SUPPORTED_HEAD_DIMS,
            description="FlashInfer paged prefill/decode (bf16/fp16; decode graphs re-planned)",
        ),
    ]


def _ipc_factory(config):
    from pdcore_cuda.ipc_transfer import CudaIpcTransferEngine

    return CudaIpcTransferEngine(config)


def _ipc_check() -> Availability:
    platform = CudaPlatform().availability()
    if not platform.ok:
        return Availability.no(f"needs a CUDA device: {platform.reason}")
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return Availability.no(f"the CUDA driver library is not loadable: {e}")
    return Availability.yes("CUDA IPC between processes of this host")


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="cuda_ipc",
            factory=_ipc_factory,
            memory_kinds=(MemoryKind.VRAM,),
            check=_ipc_check,
            description="GPU to GPU on one host through CUDA IPC (NVLink/PCIe P2P copies)",
        )
    ]
