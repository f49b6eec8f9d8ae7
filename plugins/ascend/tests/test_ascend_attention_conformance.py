"""The ``ascend`` backend passes pdcore's attention conformance kit, on the CPU, with
the fake torch_npu operators (they compute with torch; the real ones never ran here)."""

from __future__ import annotations

import pytest

from pdcore.testing import AttentionBackendSuite


@pytest.fixture(autouse=True)
def _fake_kernels(npu_ops):
    """Every case builds the backend through the registry with the fake installed."""
    return npu_ops


class TestAscendAttentionBf16(AttentionBackendSuite):
    backend_name = "ascend"
    dtype = "bfloat16"
    page_sizes = (16, 128)  # the smallest page the kernels take, and SGLang's default
    atol = 3e-2
    rtol = 3e-2


class TestAscendAttentionFp16(AttentionBackendSuite):
    backend_name = "ascend"
    dtype = "float16"
    page_sizes = (32,)
    atol = 3e-3
    rtol = 3e-3
