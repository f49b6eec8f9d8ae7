"""Conformance kit for backend authors (also a pytest plugin, entry point ``pytest11``).

Subclass a suite in your plugin's tests and name your backend::

    from pdcore.testing import AttentionBackendSuite, TransferBackendSuite

    class TestMyEngine(TransferBackendSuite):
        backend_name = "my-engine"

    class TestMyKernels(AttentionBackendSuite):
        backend_name = "my-attention"
"""

from pdcore.testing.attention_suite import AttentionBackendSuite
from pdcore.testing.transfer_suite import TransferBackendSuite

__all__ = ["AttentionBackendSuite", "TransferBackendSuite"]
