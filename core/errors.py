"""Exceptions shared across the core; each carries a message meant for users."""

from __future__ import annotations


class PdcoreError(Exception):
    """Base class of pdcore's user-facing errors."""


class PluginError(PdcoreError):
    """A plugin could not be selected (unknown, duplicated, unavailable)."""


class UnknownBackendError(PluginError):
    """No installed plugin provides the requested name."""


class DuplicateBackendError(PluginError):
    """Two distributions provide a backend of the same kind and name."""


class BackendUnavailableError(PluginError):
    """The backend is installed but cannot run here (missing library or device)."""


class ConfigError(PdcoreError):
    """An invalid flag value or flag combination; names the offending flag."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        self.message = message
        super().__init__(f"{flag}: {message}")
