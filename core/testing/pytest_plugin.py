"""pytest plugin (entry point ``pytest11``): the conformance kit's marker and fixtures.

Suites are plain classes in ``pdcore.testing``; this plugin only adds the
``pdcore_conformance`` marker to their tests (``-m pdcore_conformance`` selects
them) and a ``pdcore_registry`` fixture with a freshly discovered registry.
"""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pdcore_conformance: a test from pdcore's backend conformance kit"
    )


def pytest_collection_modifyitems(items):
    from pdcore.testing.attention_suite import AttentionBackendSuite
    from pdcore.testing.transfer_suite import TransferBackendSuite

    for item in items:
        cls = getattr(item, "cls", None)
        if cls and issubclass(cls, (TransferBackendSuite, AttentionBackendSuite)):
            item.add_marker(pytest.mark.pdcore_conformance)


@pytest.fixture
def pdcore_registry():
    from pdcore.registry import Registry

    return Registry.discover()
