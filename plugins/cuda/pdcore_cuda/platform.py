"""The ``cuda`` platform: NVIDIA GPUs through torch's CUDA runtime.

torch is imported inside methods so that registering the plugin (``pdcore
plugins``, argument parsing) stays cheap on machines without a GPU.
"""

from __future__ import annotations

import os

from pdcore.hookspecs import Availability
from pdcore.platform import MemoryInfo, MemoryKind, Platform


class CudaPlatform(Platform):
    """NVIDIA GPUs; KV buffers in VRAM; NCCL for collectives."""

    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    memory_kind = MemoryKind.VRAM
    priority = 100
    description = "NVIDIA GPU (torch CUDA), KV in VRAM"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"

    def availability(self) -> Availability:
        import torch

        if torch.version.cuda is None:
            return Availability.no(f"torch built without CUDA (torch {torch.__version__})")
        try:
            count = torch.cuda.device_count()
        except RuntimeError as e:
            return Availability.no(f"CUDA driver error: {e}")
        if count > 0:
            return Availability.yes(f"{count} device(s), CUDA {torch.version.cuda}")
        # device_count() hides why it saw nothing; a failed init states the driver's reason.
        error = _cuda_init_error(torch)
        visible = os.environ.get(self.visible_devices_env)
        if visible is not None and (error is None or "no cuda gpus are available" in error.lower()):
            return Availability.no(
                f"no CUDA device visible ({self.visible_devices_env}={visible!r})"
            )
        if error:
            return Availability.no(f"CUDA driver error: {error}")
        return Availability.no(f"no CUDA device visible ({self.visible_devices_env} unset)")

    def device_count(self) -> int:
        import torch

        return torch.cuda.device_count()

    def memory_info(self, device_index: int = 0) -> MemoryInfo:
        import torch

        free, total = torch.cuda.mem_get_info(device_index)
        return MemoryInfo(free, total)

    def set_device(self, device_index: int) -> None:
        import torch

        torch.cuda.set_device(device_index)

    def supported_dtypes(self) -> tuple[str, ...]:
        import torch

        if _bf16_supported(torch):
            return ("float32", "bfloat16", "float16")
        return ("float32", "float16")

    def layer_kernels(self):
        """Fused Triton norms, rotary and SiLU-and-mul, where Triton is installed."""
        try:
            from pdcore_cuda.layer_kernels import TritonLayerKernels
        except ImportError:
            return None
        return TritonLayerKernels()

    def default_dtype(self) -> str:
        return "bfloat16" if "bfloat16" in self.supported_dtypes() else "float16"

    def make_event(self):
        import torch

        return torch.cuda.Event()

    supports_graphs = True

    def graph_pool(self):
        import torch

        return torch.cuda.graph_pool_handle()

    def capture_graph(self, step, pool=None):
        """Warm ``step`` up twice on a side stream (compiles kernels, settles the
        allocator), then capture it into a ``torch.cuda.CUDAGraph``."""
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            output = step()
        return graph, output

    def pinned_empty(self, size: int, dtype):
        import torch

        return torch.empty(size, dtype=dtype, pin_memory=True)

    def to_device_async(self, tensor, device):
        return tensor.pin_memory().to(device, non_blocking=True)

    def profiler_activities(self) -> tuple[str, ...]:
        return ("CPU", "CUDA")


def _cuda_init_error(torch) -> str | None:
    """The error text of initializing CUDA, or None if it initializes."""
    try:
        torch.cuda.init()
    except Exception as e:  # torch raises RuntimeError, AssertionError or its own types
        return str(e)
    return None


def _bf16_supported(torch) -> bool:
    """Native bf16 only: emulated bf16 (pre-Ampere) is slow and unsupported by the kernels."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch has no flag and counts emulation; ask the hardware
        return torch.cuda.get_device_capability()[0] >= 8
    except (AssertionError, RuntimeError):  # no CUDA build or no device
        return False
