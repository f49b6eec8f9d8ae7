"""Fake entry points and plugin modules for registry tests (no installs needed)."""

from __future__ import annotations

import types

from pdcore.attention.base import AttentionBackend
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.hookspecs import Availability, hookimpl


class FakeDist:
    def __init__(self, name: str, version: str = "1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Duck-types importlib.metadata.EntryPoint: name, value, dist, load()."""

    def __init__(self, name, dist, load):
        self.name = name
        self.value = f"{dist}_module"
        self.dist = FakeDist(dist)
        self._load = load
        self.loads = 0

    def load(self):
        self.loads += 1
        return self._load()


def transfer_plugin(*names: str, ok: bool = True) -> types.ModuleType:
    module = types.ModuleType("fake_transfer_plugin")

    @hookimpl
    def pdcore_transfer_backends():
        return [
            TransferBackend(
                name=n,
                factory=lambda cfg: None,
                check=(lambda: Availability.yes()) if ok else (lambda: Availability.no("no lib")),
            )
            for n in names
        ]

    module.pdcore_transfer_backends = pdcore_transfer_backends
    return module


def attention_plugin(name: str, platforms=("cpu",), **fields) -> types.ModuleType:
    """A plugin registering one attention backend; ``fields``: more of its
    ``AttentionBackend`` fields (priority, kv_layout, dtypes, ...)."""
    module = types.ModuleType("fake_attention_plugin")

    @hookimpl
    def pdcore_attention_backends():
        return [
            AttentionBackend(name=name, factory=lambda cfg: None, platforms=platforms, **fields)
        ]

    module.pdcore_attention_backends = pdcore_attention_backends
    return module


def module_with(**hooks) -> types.ModuleType:
    module = types.ModuleType("fake_plugin")
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def ep(name, dist, module):
    return FakeEntryPoint(name, dist, lambda: module)


def failing_ep(name, dist, exc):
    def load():
        raise exc

    return FakeEntryPoint(name, dist, load)
