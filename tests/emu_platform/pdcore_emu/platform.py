"""The ``emu`` platform: host tensors behind every device seam of ``Platform``.

It declares its own memory kind (VRAM), events and graph capture, so that an
engine on it takes the paths a real accelerator takes (overlap scheduling with
events, decode graphs) while computing exactly what the CPU computes.
"""

from __future__ import annotations

from pdcore.hookspecs import Availability
from pdcore.platform import CpuPlatform, MemoryInfo, MemoryKind, Platform


class HostEvent:
    """An event of a device that finishes work as it is queued: counts its use."""

    def __init__(self):
        self.records = 0
        self.waits = 0

    def record(self) -> None:
        self.records += 1

    def synchronize(self) -> None:
        self.waits += 1


class ReplayGraph:
    """A captured decode pass: ``replay`` reruns it and leaves its result in the
    tensor capture returned, as a device graph writes its static output."""

    def __init__(self, step, output):
        self._step = step
        self.output = output
        self.replays = 0

    def replay(self) -> None:
        self.output.copy_(self._step())
        self.replays += 1


class EmuPlatform(Platform):
    """An emulated accelerator: device memory (VRAM) that is host memory underneath."""

    name = "emu"
    device_type = "cpu"  # its tensors are CPU tensors: no torch backend to register
    dist_backend = "gloo"
    memory_kind = MemoryKind.VRAM
    priority = -10  # never chosen by --device auto over the real CPU platform
    description = "Emulated accelerator on the host CPU (tests): own events, replayed graphs"
    supports_graphs = True

    def __init__(self):
        self.events: list[HostEvent] = []
        self.graphs: list[ReplayGraph] = []

    def availability(self) -> Availability:
        return Availability.yes("emulated on the host CPU")

    def device_count(self) -> int:
        return 1

    def memory_info(self, device_index: int = 0) -> MemoryInfo:
        return CpuPlatform().memory_info()

    def default_dtype(self) -> str:
        return "float32"

    def make_event(self) -> HostEvent:
        event = HostEvent()
        self.events.append(event)
        return event

    def capture_graph(self, step, pool=None):
        output = step()
        graph = ReplayGraph(step, output)
        self.graphs.append(graph)
        return graph, output
