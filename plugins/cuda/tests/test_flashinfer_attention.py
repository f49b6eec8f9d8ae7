"""The flashinfer backend passes the conformance kit on a GPU (bf16 and fp16)."""

from __future__ import annotations

import pytest

from pdcore.testing import AttentionBackendSuite

pytest.importorskip("flashinfer", reason="flashinfer is not installed")


@pytest.mark.gpu
class TestFlashInferBf16(AttentionBackendSuite):
    backend_name = "flashinfer"
    device = "cuda"
    dtype = "bfloat16"
    page_sizes = (1, 16)
    atol = 3e-2
    rtol = 3e-2
    unsupported_shapes = {"mha": "head_dim 32: FlashInfer 0.7.2 has no valid prefill config"}


@pytest.mark.gpu
def test_head_dim_32_is_refused_with_a_hint():
    import torch
    from pdcore_cuda.flashinfer_attention import FlashInferAttention

    from pdcore.attention.base import AttentionConfig

    cfg = AttentionConfig(4, 4, 32, 16, torch.bfloat16, torch.device("cuda"))
    with pytest.raises(ValueError, match="head_dim"):
        FlashInferAttention(cfg)


@pytest.mark.gpu
def test_float32_is_refused_with_a_hint():
    import torch
    from pdcore_cuda.flashinfer_attention import FlashInferAttention

    from pdcore.attention.base import AttentionConfig

    cfg = AttentionConfig(8, 2, 64, 16, torch.float32, torch.device("cuda"))
    with pytest.raises(ValueError, match="--attention-backend triton"):
        FlashInferAttention(cfg)
