"""Platform seam: what a device family is and how the core talks to it.

A ``Platform`` (cpu, cuda, npu, ...) tells the core its torch device type, how to
detect availability, how much memory is free, which torch.distributed backend to
use and which memory kind transfer engines must register for its KV buffers. It
also owns every device-specific call of the engine: events (overlap scheduling),
graph capture and replay (decode graphs), pinned host memory and profiler
activities. The core never tests a device name; the defaults below describe a
device that runs synchronously with the host (the CPU), so a new accelerator
overrides only what it has. The core's own CPU platform is registered through
the same hook as any plugin.
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
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

    # ---- asynchronous execution: overlap scheduling and decode graphs ---------

    def make_event(self):
        """A device event (``record()`` after queued work, ``synchronize()`` to wait
        for it), or None where work runs synchronously with the host: then overlap
        scheduling reads tokens directly and needs no event."""
        return None

    def synchronize(self, device) -> None:
        """Wait for all work queued on ``device`` (before a transfer engine reads
        KV pages it just wrote). Default: ``torch.accelerator``'s, nothing on the host."""
        if device.type != "cpu":
            import torch

            torch.accelerator.synchronize(device)

    supports_graphs: bool = False  # decode passes may be captured (``capture_graph``);
    # a platform that captures graphs must also make events (``make_event``)

    def graph_pool(self):
        """A memory pool the decode graphs of one engine share (None: no sharing)."""
        return None

    def capture_graph(self, step: Callable[[], object], pool=None) -> tuple[object, object]:
        """Capture ``step`` (a decode pass over static buffers) as a graph.

        Returns ``(graph, output)``: ``graph.replay()`` reruns the pass on the
        buffers' current contents and leaves its result in ``output``. Called only
        where ``supports_graphs`` is true.
        """
        raise RuntimeError(
            f"platform {self.name!r} does not capture graphs (its supports_graphs is False)"
        )

    # ---- host memory -----------------------------------------------------------

    def pinned_empty(self, size: int, dtype):
        """An uninitialised 1-D host tensor that asynchronous copies to and from the
        device may use (page-locked where the device needs that)."""
        import torch

        return torch.empty(size, dtype=dtype)

    def to_device_async(self, tensor, device):
        """``tensor`` (on the host) on ``device`` without making the host wait for
        work queued on the device; the CPU default is ``tensor.to(device)``."""
        return tensor.to(device)

    # ---- profiling ---------------------------------------------------------------

    def profiler_activities(self) -> tuple[str, ...]:
        """``torch.profiler.ProfilerActivity`` names traced by default on this
        platform; "CPU" always, plus the device's own where torch can trace it."""
        return ("CPU",)


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
