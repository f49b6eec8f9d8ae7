"""Pluggy hook specifications: the seams every pdcore plugin answers.

Each registration hook returns a list of typed registration objects
(``pdcore.platform.Platform``, ``pdcore.attention.base.AttentionBackend``,
``pdcore.disaggregation.transfer.TransferBackend``). Registration must be cheap:
heavy libraries are imported inside factories and availability checks only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pluggy

PROJECT_NAME = "pdcore"
ENTRY_POINT_GROUP = "pdcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, why (shown by ``pdcore plugins``)."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls, detail: str = "") -> Availability:
        return cls(True, detail)

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


class PdcoreSpecs:
    """Hook specifications of project ``pdcore``."""

    @hookspec
    def pdcore_platforms(self) -> list:
        """Return ``Platform`` objects (cpu, cuda, npu, ...) this plugin provides."""

    @hookspec
    def pdcore_attention_backends(self) -> list:
        """Return ``AttentionBackend`` registration objects."""

    @hookspec
    def pdcore_transfer_backends(self) -> list:
        """Return ``TransferBackend`` registration objects."""

    @hookspec
    def pdcore_add_cli_args(self, parser: argparse.ArgumentParser) -> None:
        """Add plugin-specific flags to the server's argument parser.

        Use a prefix naming the plugin (``--example-tcp-timeout``) to avoid clashes.
        Every flag added here is one of this plugin's options (keyed by its
        ``dest``); when not given, ``PDCORE_<FLAG>`` or ``SGLANG_<FLAG>`` sets it
        (``PDCORE_EXAMPLE_TCP_TIMEOUT``). Values must be str, int, float, bool, None
        or a list of those: they travel to every engine process as plain data.
        """

    @hookspec
    def pdcore_configure(self, args: argparse.Namespace) -> dict | None:
        """Validate or normalize plugin flags after parsing (server front end only).

        ``args`` holds the server's flags and every plugin's. Raise
        ``pdcore.config.ConfigError(flag, message)`` for invalid values. Return None
        to keep this plugin's options as parsed, or a mapping of (some of) its own
        options to replace their values. The result is what the plugin's factories
        receive in every engine process (``TransferConfig.options``,
        ``AttentionConfig.options``, ``Platform.configure``); this hook itself runs
        once, in the process that parses the flags (each node's, under
        ``--nnodes``), never in engine processes.
        """
