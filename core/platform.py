"""Platform seam: what a device family is and how the core talks to it.

A ``Platform`` (cpu, cuda, npu, ...) tells the core its torch device type, how to
detect availability, how much memory is free, which torch.distributed backend to
use and which memory kind transfer engines must register for its KV buffers.
The core's own CPU platform is registered through the same hook as any plugin.
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pdcore.hookspecs import Availability


class MemoryKind(str, enum.Enum):
    """Where KV buffers live; transfer engines declare which kinds they can move."""

    DRAM = "DRAM"
    VRAM = "VRAM"
    NPU = "NPU"


@dataclass(frozen=True)
class MemoryInfo:
    free_bytes: int
    total_bytes: int


class Platform(ABC):
    """A device family. Subclass and return an instance from ``pdcore_platforms``.

    ``priority`` orders automatic selection (``--device auto``): the available
    platform with the highest priority wins, so accelerators outrank the CPU.
    """

    name: str = ""
    device_type: str = ""  # torch device type: "cpu", "cuda", "npu"
    dist_backend: str = ""  # torch.distributed backend: "gloo", "nccl", "hccl"
    memory_kind: MemoryKind = MemoryKind.DRAM
    priority: int = 0
    description: str = ""
    visible_devices_env: str | None = None  # e.g. CUDA_VISIBLE_DEVICES
    options: Mapping[str, Any] = MappingProxyType({})  # set by ``configure``

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this platform can run here; the reason when it cannot."""

    @abstractmethod
    def device_count(self) -> int:
        """Number of visible devices (1 for the CPU)."""

    @abstractmethod
    def memory_info(self, device_index: int = 0) -> MemoryInfo:
        """Free and total memory of one device, in bytes."""

    def torch_device(self, device_index: int = 0):
        """The ``torch.device`` of one local device (torch imported lazily)."""
        import torch

        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, device_index)

    def layer_kernels(self):
        """Fused element-wise layer kernels (a ``pdcore.model.kernels.LayerKernels``),
        or None for the torch reference versions."""
        return None

    def configure(self, options: Mapping[str, Any]) -> None:
        """Receive the plugin's options (its own flags; ``pdcore.plugin_options``).

        Every engine process (each TP and DP rank) calls this once, before
        ``set_device``; the default keeps them as ``self.options``.
        """
        self.options = dict(options)

    def set_device(self, device_index: int) -> None:
        """Make ``device_index`` current for this process (no-op on the CPU)."""

    def supported_dtypes(self) -> tuple[str, ...]:
        return ("float32", "bfloat16", "float16")

    def default_dtype(self) -> str:
        return "bfloat16"


class CpuPlatform(Platform):
    """The host CPU: always available; KV buffers live in DRAM; gloo for collectives."""

    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    memory_kind = MemoryKind.DRAM
    priority = 0
    description = "Host CPU (torch), KV in DRAM"

    def availability(self) -> Availability:
        return Availability.yes(f"{os.cpu_count()} cores")

    def device_count(self) -> int:
        return 1

    def memory_info(self, device_index: int = 0) -> MemoryInfo:
        return _host_memory_info()

    def default_dtype(self) -> str:
        return "float32"


def _host_memory_info() -> MemoryInfo:
    """MemAvailable/MemTotal from /proc/meminfo, falling back to sysconf."""
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return MemoryInfo(fields["MemAvailable"], fields["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        return MemoryInfo(os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page)
