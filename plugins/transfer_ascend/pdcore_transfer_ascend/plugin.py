"""Entry point ``ascend-transfer``: registers the ``ascend`` transfer backend.

Imports neither mf_adapter, Mooncake nor torch_npu: they load CANN/memfabric
shared libraries, so only ``check``, the configure hook and the factory touch
them. ``ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true`` switches the backend from
memfabric to Mooncake's ``ascend`` transport (``mooncake_path``).
"""

from __future__ import annotations

import os

from pdcore.disaggregation.transfer import (
    TransferBackend,
    TransferConfig,
    TransferEngine,
    TransferError,
)
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind
from pdcore_transfer_ascend.unverified import noted

INSTALL_HINT = "install the mf_adapter wheel from your CANN/memfabric release, or memfabric-hybrid"
MOONCAKE_HINT = (
    "pip install 'pdcore-transfer-ascend[mooncake]' and a Mooncake built with USE_ASCEND"
)


def _memfabric_problem() -> str | None:
    from pdcore_transfer_ascend.native import driver_problem, import_binding

    try:
        import_binding()
    except ImportError as e:
        return f"mf_adapter not importable: {e}; {INSTALL_HINT}"
    problem = driver_problem()
    return f"mf_adapter: Ascend driver does not support mf: {problem}" if problem else None


def _mooncake_problem() -> str | None:
    try:
        import pdcore_transfer_mooncake.engine  # noqa: F401 - imports mooncake.engine
    except ImportError as e:
        return f"ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true but Mooncake is missing: {e}; " + (
            MOONCAKE_HINT
        )
    return None


def _npu_problem() -> str | None:
    try:
        import torch
        import torch_npu  # noqa: F401
    except Exception as e:  # ImportError/OSError for missing CANN libs, RuntimeError on mismatch
        return f"torch_npu not importable: {e}; the ascend engine moves NPU memory"
    if torch.npu.device_count() == 0:
        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        shown = "unset" if visible is None else repr(visible)
        return f"no NPU visible (ASCEND_RT_VISIBLE_DEVICES={shown})"
    return None


def check() -> Availability:
    """The path's library must load (and memfabric find the driver), and an NPU be visible.

    Every problem found is listed, so one look at ``pdcore plugins`` shows all of them.
    """
    from pdcore_transfer_ascend.settings import use_mooncake

    try:
        library = _mooncake_problem() if use_mooncake() else _memfabric_problem()
    except TransferError as e:  # a malformed ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE
        library = str(e)
    problems = [p for p in (library, _npu_problem()) if p]
    if problems:
        return noted(Availability.no("; ".join(problems)))
    return noted(Availability.yes("Mooncake ascend transport" if use_mooncake() else "memfabric"))


def _factory(config: TransferConfig) -> TransferEngine:
    from pdcore_transfer_ascend.settings import use_mooncake

    if use_mooncake():
        from pdcore_transfer_ascend.mooncake_path import MooncakeAscendEngine

        return MooncakeAscendEngine(config)
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
            "device RDMA; needs ASCEND_MF_STORE_URL. With "
            "ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true: Mooncake's ascend transport",
        )
    ]


@hookimpl
def pdcore_configure(args):
    """Prefill node 0 starts the memfabric config store (see ``store``)."""
    if getattr(args, "disaggregation_transfer_backend", None) != "ascend":
        return
    from pdcore_transfer_ascend.store import start_store

    start_store(args)
