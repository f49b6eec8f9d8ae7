"""Make this process look like an Ascend host whose one NPU is the CPU.

``install()`` puts the fake ``torch_npu`` into ``sys.modules`` (so every
``import torch_npu`` gets it), gives torch a ``torch.npu`` namespace answering
for one device with host memory, and places the ``npu`` platform's tensors on
the CPU. That last step is where the stand-in is not faithful: a CPU build of
torch has no ``npu`` device type (nor pinned host memory), so
``AscendPlatform.torch_device`` and ``to_device_async`` are replaced.
Everything else (platform selection, attention selection, the operators'
argument checks) runs as it would with torch_npu.
"""

from __future__ import annotations

import sys
import types

import torch

from pdcore.platform import CpuPlatform
from pdcore_ascend.platform import AscendPlatform
from pdcore_ascend.testing.fake_torch_npu import make_module


def _host_device(self, device_index: int = 0) -> torch.device:
    return torch.device("cpu")


def _host_copy(self, tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.to(device)


def _npu_namespace(device_count: int) -> types.SimpleNamespace:
    """What pdcore asks of ``torch.npu``.

    ``is_available`` answers False: transformers takes its own NPU code paths
    (torch_npu functions pdcore never calls) when it is true. pdcore asks
    ``device_count`` instead.
    """

    def mem_get_info(index: int = 0) -> tuple[int, int]:
        info = CpuPlatform().memory_info()
        return info.free_bytes, info.total_bytes

    return types.SimpleNamespace(
        is_available=lambda: False,
        device_count=lambda: device_count,
        mem_get_info=mem_get_info,
        set_device=lambda index: None,
        current_device=lambda: 0,
        is_bf16_supported=lambda: True,
    )


def install(device_count: int = 1) -> types.ModuleType:
    """Install the fake NPU stack into this process; returns the fake torch_npu module."""
    module = make_module()
    sys.modules["torch_npu"] = module
    torch.npu = _npu_namespace(device_count)
    AscendPlatform.torch_device = _host_device
    AscendPlatform.to_device_async = _host_copy
    return module
