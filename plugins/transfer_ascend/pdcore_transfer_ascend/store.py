"""The memfabric config store, started by prefill node 0 as SGLang does.

Every ascend transfer engine of a deployment registers at ``ASCEND_MF_STORE_URL``.
SGLang's prefill server on node 0 creates that store (mf_adapter's
``create_config_store``) before its engines start; here the plugin's
``pdcore_configure`` hook does it in the server's front-end process, which lives
as long as the server. Set ``PDCORE_ASCEND_MF_CREATE_STORE=false`` when the store
runs elsewhere (``python -m mf_adapter.launch_ascend_mf_store``).
"""

from __future__ import annotations

import logging

from pdcore.disaggregation.transfer import TransferError
from pdcore_transfer_ascend.native import import_binding
from pdcore_transfer_ascend.return_codes import describe
from pdcore_transfer_ascend.settings import (
    CREATE_STORE_ENV,
    MfSettings,
    create_store,
    use_mooncake,
)

logger = logging.getLogger(__name__)
FLAG = "--disaggregation-transfer-backend"


def owns_store(args) -> bool:
    """Prefill, node 0, the memfabric path, and creation not switched off."""
    return (
        args.disaggregation_transfer_backend == "ascend"
        and args.disaggregation_mode == "prefill"
        and args.node_rank == 0
        and not use_mooncake()
        and create_store()
    )


def start_store(args) -> str | None:
    """Create the store if this server owns it; its URL, or None. Errors name the flag."""
    from pdcore.config import ConfigError

    try:
        if not owns_store(args):
            return None
        url = MfSettings.from_env().store_url
        binding = import_binding()
    except (TransferError, ImportError) as e:
        raise ConfigError(FLAG, f"ascend: {e}") from e
    ret = binding.create_config_store(url)
    if ret != 0:
        raise ConfigError(
            FLAG,
            f"ascend: mf_adapter create_config_store({url!r}) failed with {describe(ret)}; "
            f"if a store already runs there, set {CREATE_STORE_ENV}=false",
        )
    logger.info("memfabric config store listening at %s", url)
    return url
