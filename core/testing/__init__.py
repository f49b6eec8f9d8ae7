"""Conformance kit for backend authors (also a pytest plugin, entry point ``pytest11``).

Subclass a suite in your plugin's tests and name your backend::

    from pdcore.testing import TransferBackendSuite

    class TestMyEngine(TransferBackendSuite):
        backend_name = "my-engine"
"""
