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
MOONCAKE_ENV = "ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE"
NPU_PHY_ID_ENV = "ASCEND_NPU_PHY_ID"
CREATE_STORE_ENV = "PDCORE_ASCEND_MF_CREATE_STORE"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
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


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise TransferError(f"{name}={value!r} is not a boolean; use true or false")


def use_mooncake(environ: Mapping[str, str] | None = None) -> bool:
    """``ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE=true``: move KV with Mooncake's ``ascend``
    transport instead of memfabric (SGLang's switch, same name)."""
    return _flag(os.environ if environ is None else environ, MOONCAKE_ENV, False)


def create_store(environ: Mapping[str, str] | None = None) -> bool:
    """Whether prefill node 0 starts the config store (``PDCORE_ASCEND_MF_CREATE_STORE``,
    default true as in SGLang; false when the store is launched separately)."""
    return _flag(os.environ if environ is None else environ, CREATE_STORE_ENV, True)


def npu_phy_id(environ: Mapping[str, str] | None = None) -> int | None:
    """``ASCEND_NPU_PHY_ID``: the physical NPU id when a container renumbers devices."""
    environ = os.environ if environ is None else environ
    value = environ.get(NPU_PHY_ID_ENV, "").strip()
    if value in ("", "-1"):
        return None
    if not value.isdigit():
        raise TransferError(f"{NPU_PHY_ID_ENV}={value!r} is not a device id (0, 1, ...)")
    return int(value)
