"""Registration through the ``pdcore`` entry point, availability, cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pdcore.platform import MemoryKind
from pdcore.registry import Registry


def test_registered_through_entry_point():
    registry = Registry.discover()
    reg = registry.lookup("transfer", "mooncake")
    assert reg.provider.distribution == "pdcore-transfer-mooncake"
    assert reg.provider.plugin == "mooncake"
    assert reg.spec.memory_kinds == (MemoryKind.DRAM, MemoryKind.VRAM)
    available = registry.availability(reg)
    assert available.ok, available.reason
    assert available.reason.startswith("mooncake-transfer-engine"), available.reason


def test_check_names_import_error_and_install_hint(monkeypatch):
    from pdcore_transfer_mooncake.plugin import check

    monkeypatch.setitem(sys.modules, "mooncake.engine", None)
    result = check()
    assert not result.ok
    assert result.reason.startswith("mooncake not importable: ")
    assert "mooncake.engine" in result.reason
    assert result.reason.endswith("pip install 'pdcore[mooncake]' (CPU: pdcore[mooncake-cpu])")


@pytest.mark.timeout(60)
def test_discovery_does_not_import_mooncake():
    code = (
        "import sys; from pdcore.registry import Registry; "
        "Registry.discover().get('transfer', 'mooncake'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mooncake'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
