"""Entry point ``ascend-transfer``: registers the ``ascend`` transfer backend.

Imports neither mf_adapter nor torch_npu: both load CANN/memfabric shared
libraries, so only ``check`` and the factory touch them.
"""

from __future__ import annotations

import os

from pdcore.disaggregation.transfer import TransferBackend, TransferConfig, TransferEngine
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind

INSTALL_HINT = "install the mf_adapter wheel from your CANN/memfabric release, or memfabric-hybrid"


def check() -> Availability:
    """memfabric's binding must load, and torch_npu must see an NPU whose memory it moves."""
    from pdcore_transfer_ascend.native import import_transfer_engine

    try:
        import_transfer_engine()
    except ImportError as e:
        return Availability.no(f"mf_adapter not importable: {e}; {INSTALL_HINT}")
    try:
        import torch
        import torch_npu  # noqa: F401
    except Exception as e:  # ImportError/OSError for missing CANN libs, RuntimeError on mismatch
        return Availability.no(f"torch_npu not importable: {e}; the ascend engine moves NPU memory")
    if torch.npu.device_count() == 0:
        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        shown = "unset" if visible is None else repr(visible)
        return Availability.no(f"no NPU visible (ASCEND_RT_VISIBLE_DEVICES={shown})")
    return Availability.yes()


def _factory(config: TransferConfig) -> TransferEngine:
    from pdcore_transfer_ascend.engine import AscendTransferEngine

    return AscendTransferEngine(config)


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="ascend",
            factory=_factory,
            memory_kinds=(MemoryKind.NPU,),
            check=check,
            description="Ascend NPU-to-NPU KV transfer on memfabric (mf_adapter): SDMA or "
            "device RDMA; needs ASCEND_MF_STORE_URL",
        )
    ]
