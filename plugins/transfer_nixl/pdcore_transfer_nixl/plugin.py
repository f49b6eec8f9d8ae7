"""Entry point ``nixl``: registers the NIXL transfer backend.

Imports no NIXL code at module level: ``import nixl`` picks and loads a
CUDA-specific native wheel (nixl_cu12/nixl_cu13) with UCX, so only ``check`` and
the factory touch it.
"""

from __future__ import annotations

import importlib.metadata as md

from pdcore.disaggregation.transfer import TransferBackend, TransferConfig, TransferEngine
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind

INSTALL_HINT = "pip install 'pdcore[nixl]'"


def check() -> Availability:
    try:
        import nixl._api
    except ImportError as e:
        return Availability.no(f"nixl not importable: {e}; {INSTALL_HINT}")
    import nixl

    native = getattr(getattr(nixl, "_pkg", None), "__name__", "")
    try:
        version = md.version("nixl")
    except md.PackageNotFoundError:
        version = "?"
    return Availability.yes(f"nixl {version}" + (f" ({native})" if native else ""))


def _factory(config: TransferConfig) -> TransferEngine:
    from pdcore_transfer_nixl.engine import NixlTransferEngine

    return NixlTransferEngine(config)


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="nixl",
            factory=_factory,
            memory_kinds=(MemoryKind.DRAM, MemoryKind.VRAM),
            check=check,
            description="NVIDIA NIXL over UCX: DRAM or VRAM, with notifications",
            # UCX listens on ephemeral ports of the interfaces it picks
            # (UCX_NET_DEVICES) and takes any peer; --disaggregation-secret seals the
            # in-band notices, not the WRITEs.
            data_plane_authenticated=False,
        )
    ]
