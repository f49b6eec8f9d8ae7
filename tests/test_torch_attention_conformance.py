"""The built-in torch attention backend passes the conformance kit on the CPU."""

import pytest

from pdcore.testing import AttentionBackendSuite


class TestTorchAttentionConformance(AttentionBackendSuite):
    backend_name = "torch"


class TestTorchAttentionBf16(AttentionBackendSuite):
    backend_name = "torch"
    dtype = "bfloat16"
    page_sizes = (16,)
    atol = 3e-2
    rtol = 3e-2


@pytest.mark.gpu
class TestTorchAttentionCudaBf16(AttentionBackendSuite):
    """The same torch backend on a CUDA device (runs only where one exists)."""

    backend_name = "torch"
    device = "cuda"
    dtype = "bfloat16"
    page_sizes = (1, 16)
    atol = 3e-2
    rtol = 3e-2
