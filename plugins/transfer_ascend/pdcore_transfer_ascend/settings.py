"""Environment and role settings of the ascend engine, validated before any native call.

The variable names are the ones SGLang and memfabric's ``launch_ascend_mf_store``
read, so one deployment's environment serves both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pdcore.disaggregation.transfer import TransferError

STORE_URL_ENV = "ASCEND_MF_STORE_URL"
PROTOCOL_ENV = "ASCEND_MF_TRANSFER_PROTOCOL"
DEFAULT_PROTOCOL = "sdma"

# protocol name -> member of mf_adapter's TransferEngine.TransDataOpType
PROTOCOLS = {"sdma": "SDMA", "device_rdma": "DEVICE_RDMA"}

# pdcore role -> the role string mf_adapter's initialize() accepts (anything else fails)
ROLES = {"prefill": "Prefill", "decode": "Decode"}


@dataclass(frozen=True)
class MfSettings:
    """Where the memfabric config store is and which data path moves the bytes."""

    store_url: str
    protocol: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MfSettings:
        environ = os.environ if environ is None else environ
        store_url = environ.get(STORE_URL_ENV, "").strip()
        if not store_url:
            raise TransferError(
                f"{STORE_URL_ENV} is not set: the ascend transfer engine needs the URL of "
                "memfabric's config store (e.g. tcp://10.0.0.1:24667), the same on prefill "
                "and decode; start the store with `python -m mf_adapter.launch_ascend_mf_store`"
            )
        protocol = environ.get(PROTOCOL_ENV, "").strip().lower() or DEFAULT_PROTOCOL
        if protocol not in PROTOCOLS:
            choices = ", ".join(PROTOCOLS)
            raise TransferError(
                f"{PROTOCOL_ENV}={environ[PROTOCOL_ENV]!r} is not a memfabric transfer "
                f"protocol; choose one of: {choices} (default {DEFAULT_PROTOCOL})"
            )
        return cls(store_url, protocol)


def mf_role(role: str) -> str:
    """Map pdcore's ``TransferConfig.role`` to mf_adapter's ``Prefill``/``Decode``."""
    try:
        return ROLES[role.lower()]
    except (KeyError, AttributeError):
        raise TransferError(
            f"ascend transfer engine role must be one of {', '.join(ROLES)}, got {role!r}"
        ) from None
