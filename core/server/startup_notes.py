"""Log lines at server start about flags a user could misread, and plugins that
failed or lost a name conflict: said once, before serving."""

from __future__ import annotations

import logging

from pdcore.config import ServerArgs
from pdcore.disaggregation.fake import FAKE_BACKEND
from pdcore.registry import Registry

logger = logging.getLogger(__name__)

FAKE_BACKEND_WARNING = (
    "--disaggregation-transfer-backend fake: this server moves no KV cache and its "
    "outputs are NOT real model outputs (decode starts from KV pages nobody wrote). "
    "Use it for testing and warm-up only, never for real traffic."
)
TRUST_REMOTE_CODE_NOTE = (
    "--trust-remote-code has no effect: pdcore never runs code from the model folder; "
    "only its built-in architectures load (accepted for SGLang compatibility)."
)


def log_flag_notes(server_args: ServerArgs) -> None:
    """Warn that the fake transfer backend serves garbage; say --trust-remote-code is inert."""
    if (
        server_args.disaggregation_mode != "null"
        and server_args.disaggregation_transfer_backend == FAKE_BACKEND
    ):
        logger.warning(FAKE_BACKEND_WARNING)
    if server_args.trust_remote_code:
        logger.info(TRUST_REMOTE_CODE_NOTE)


def log_plugin_notes(registry: Registry) -> None:
    """One WARNING per plugin that failed to load and per backend name conflict,
    so a backend that is silently missing or not the one installed shows in the log."""
    for line in registry.warnings():
        logger.warning(line)
