"""The mooncake engine passes pdcore's transfer conformance kit."""

from pdcore.testing import TransferBackendSuite


class TestMooncakeConformance(TransferBackendSuite):
    backend_name = "mooncake"
