"""pytest plugin (entry point ``pytest11``): the conformance kit's marker and fixtures.

Suites are plain classes in ``pdcore.testing``; this plugin adds the
``pdcore_conformance`` marker to their tests (``-m pdcore_conformance`` selects
them), skips ``gpu``/``npu``-marked tests where that hardware is absent, and
offers a ``pdcore_registry`` fixture with a freshly discovered registry.
"""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pdcore_conformance: a test from pdcore's backend conformance kit"
    )
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "npu: needs an Ascend NPU (skipped without one)")


def pytest_runtest_setup(item):
    """Skip ``gpu``/``npu`` tests cleanly where that hardware is absent."""
    if item.get_closest_marker("gpu") and not _cuda_available():
        pytest.skip("needs a CUDA GPU")
    if item.get_closest_marker("npu") and not _npu_available():
        pytest.skip("needs an Ascend NPU with torch_npu")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _npu_available() -> bool:
    try:
        import torch
        import torch_npu  # noqa: F401
    except Exception:  # missing CANN libraries raise OSError/RuntimeError too
        return False
    return torch.npu.device_count() > 0


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


@pytest.fixture
def pdcore_transfer_backend():
    """Override in a transfer plugin's conftest: the backend name its tests exercise."""
    raise pytest.UsageError("define a `pdcore_transfer_backend` fixture returning a name")


@pytest.fixture
def spawn_transfer_peer(pdcore_transfer_backend):
    """``spawn_transfer_peer(region_bytes=..., **options)``: a peer process; killed after."""
    from pdcore.testing.transfer_peer import PeerProcess

    peers = []

    def spawn(region_bytes: int = 1 << 20, **options):
        peers.append(PeerProcess(pdcore_transfer_backend, options, region_bytes))
        return peers[-1]

    yield spawn
    for peer in peers:
        peer.kill()


@pytest.fixture
def new_transfer_engine(pdcore_transfer_backend):
    """``new_transfer_engine(**options)``: a local engine of the backend; closed after."""
    from pdcore.testing.transfer_peer import build_engine

    engines = []

    def build(**options):
        engines.append(build_engine(pdcore_transfer_backend, None, options, "prefill"))
        return engines[-1]

    yield build
    for engine in engines:
        engine.close()
