"""The nixl engine passes pdcore's transfer conformance kit."""

from pdcore.testing import TransferBackendSuite


class TestNixlConformance(TransferBackendSuite):
    backend_name = "nixl"
