"""Entry point ``mooncake``: registers the Mooncake transfer backend.

Imports no Mooncake code at module level: the wheel loads RDMA/CUDA shared
libraries, so only ``check`` and the factory touch it.
"""

from __future__ import annotations

import importlib.metadata as md

from pdcore.disaggregation.transfer import TransferBackend, TransferConfig, TransferEngine
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind

INSTALL_HINT = "pip install 'pdcore[mooncake]' (CPU: pdcore[mooncake-cpu])"


def installed_distribution() -> str:
    """Which of the per-hardware Mooncake wheels provides ``mooncake`` here."""
    dists = md.packages_distributions().get("mooncake") or ["mooncake"]
    name = dists[0]
    try:
        return f"{name} {md.version(name)}"
    except md.PackageNotFoundError:
        return name


def check() -> Availability:
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as e:
        return Availability.no(f"mooncake not importable: {e}; {INSTALL_HINT}")
    return Availability.yes(installed_distribution())


def _factory(config: TransferConfig) -> TransferEngine:
    from pdcore_transfer_mooncake.engine import MooncakeTransferEngine

    return MooncakeTransferEngine(config)


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="mooncake",
            factory=_factory,
            memory_kinds=(MemoryKind.DRAM, MemoryKind.VRAM),
            check=check,
            description="Mooncake Transfer Engine: TCP or RDMA, P2P handshake; "
            "VRAM needs a CUDA build; no notifications",
            # Its P2P handshake (RPC) port and TCP transport port take any peer and
            # bind every interface whatever --host; --disaggregation-secret does not
            # reach them.
            data_plane_authenticated=False,
        )
    ]
