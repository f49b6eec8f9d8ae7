"""Entry point ``emu``: the platform, its attention backend and transfer engine."""

from __future__ import annotations

from pdcore.attention.base import AttentionBackend
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind
from pdcore_emu.platform import EmuPlatform

PLATFORM = EmuPlatform()  # one per process: tests read its events and graphs


def _attention(config):
    from pdcore_emu.attention import ReplayableTorchAttention

    return ReplayableTorchAttention(config)


def _tcp(config):
    from pdcore_emu.transfer import EmuTcpTransferEngine

    return EmuTcpTransferEngine(config)


@hookimpl
def pdcore_platforms():
    return [PLATFORM]


@hookimpl
def pdcore_attention_backends():
    return [
        AttentionBackend(
            name="emu-torch",
            factory=_attention,
            platforms=("emu",),
            description="torch attention, replayable in emu graphs",
        )
    ]


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="emu-tcp",
            factory=_tcp,
            memory_kinds=(MemoryKind.VRAM,),
            check=lambda: Availability.yes("TCP between host processes"),
            description="Example TCP engine for emu's VRAM",
        )
    ]
