"""``emu-tcp``: the example plugin's TCP engine, moving ``emu``'s VRAM (host memory)."""

from __future__ import annotations

from pdcore_example.tcp_engine import TcpTransferEngine

from pdcore.platform import MemoryKind


class EmuTcpTransferEngine(TcpTransferEngine):
    name = "emu-tcp"
    memory_kinds = (MemoryKind.VRAM,)
