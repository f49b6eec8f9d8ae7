"""``ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true``: the ``ascend`` backend over Mooncake.

SGLang's switch, reproduced: instead of memfabric, Mooncake's transfer engine
moves the NPU pages with its ``ascend`` transport (HCCL underneath). Mooncake is
initialized with an NPU-qualified local name ``host:<free port>:npu_<id>``
(``id`` = ``ASCEND_NPU_PHY_ID`` when set, else the local device index), the
P2P handshake and protocol ``ascend``; peers still address this engine as
``host:<rpc port>``. Everything else (registration, batched writes, polling) is
pdcore's Mooncake plugin unchanged.

Needs a Mooncake build with the Ascend transport (``USE_ASCEND``); the PyPI
wheels are built without it. Not run on Ascend hardware.
"""

from __future__ import annotations

import dataclasses

from pdcore_transfer_mooncake.engine import P2P, MooncakeTransferEngine

from pdcore.disaggregation.transfer import TransferConfig
from pdcore.platform import MemoryKind
from pdcore.up.ports import pick_port
from pdcore_transfer_ascend.engine import session_id
from pdcore_transfer_ascend.settings import npu_phy_id

PROTOCOL = "ascend"


def qualified_hostname(hostname: str, device_id: int) -> str:
    """The local name Mooncake's ascend transport is initialized with."""
    phy = npu_phy_id()
    return f"{hostname}:{pick_port()}:npu_{device_id if phy is None else phy}"


class MooncakeAscendEngine(MooncakeTransferEngine):
    """pdcore's Mooncake engine on the ``ascend`` transport, moving NPU memory."""

    name = "ascend"  # what both sides' metadata must name: the backend they chose
    memory_kinds = (MemoryKind.NPU,)

    def __init__(self, config: TransferConfig):
        self.local_name = qualified_hostname(config.hostname, config.device_id)
        options = {**config.options, "protocol": PROTOCOL, "metadata_server": P2P}
        super().__init__(dataclasses.replace(config, hostname=self.local_name, options=options))
        # The Mooncake plugin names its segment after the hostname it was given; peers
        # reach this one at the plain host and its RPC port.
        self._session = session_id(config.hostname, self._te.get_rpc_port())
