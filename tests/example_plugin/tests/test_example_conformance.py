"""The example plugin passes pdcore's conformance kit."""

from pdcore.testing import AttentionBackendSuite, TransferBackendSuite


class TestExampleTcpConformance(TransferBackendSuite):
    backend_name = "example-tcp"
    dead_peer_timeout_s = 15.0


class TestExampleMatmulConformance(AttentionBackendSuite):
    backend_name = "example-matmul"
