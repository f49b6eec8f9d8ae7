"""Fused Triton layer kernels vs the torch reference versions (pdcore.model.kernels)."""

from __future__ import annotations

import pytest
import torch

from pdcore.model.kernels import TORCH_KERNELS

pytestmark = pytest.mark.gpu

TOL = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture
def fused():
    from pdcore_cuda.layer_kernels import TritonLayerKernels

    return TritonLayerKernels()


def rand(*shape, dtype):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_rms_norm_and_residual_add(fused, dtype, tokens):
    x, res, w = (
        rand(tokens, 4096, dtype=dtype),
        rand(tokens, 4096, dtype=dtype),
        rand(4096, dtype=dtype),
    )
    torch.testing.assert_close(
        fused.rms_norm(x, w, 1e-5), TORCH_KERNELS.rms_norm(x, w, 1e-5), **TOL[dtype]
    )
    got_h, got_sum = fused.add_rms_norm(x, res, w, 1e-6)
    want_h, want_sum = TORCH_KERNELS.add_rms_norm(x, res, w, 1e-6)
    assert torch.equal(got_sum, want_sum), "the residual sum must round exactly like torch"
    torch.testing.assert_close(got_h, want_h, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_per_head_norm_of_a_strided_view(fused, dtype):
    """Qwen3's q/k norm runs on a view of the fused qkv output."""
    qkv = rand(5, 8 * 64 + 2 * 2 * 64, dtype=dtype)
    q = qkv[:, : 8 * 64].view(5, 8, 64)
    w = rand(64, dtype=dtype)
    torch.testing.assert_close(
        fused.rms_norm(q, w, 1e-6), TORCH_KERNELS.rms_norm(q, w, 1e-6), **TOL[dtype]
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dim", [64, 128])
def test_rotary_on_qkv_views(fused, dtype, dim):
    tokens, heads, kv = 9, 8, 2
    qkv = rand(tokens, (heads + 2 * kv) * dim, dtype=dtype)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv) * dim].view(tokens, kv, dim)
    angles = torch.rand(tokens, dim // 2, device="cuda") * 50
    emb = torch.cat((angles, angles), -1)
    cos, sin = emb.cos(), emb.sin()
    got_q, got_k = fused.rotary(q, k, cos, sin)
    want_q, want_k = TORCH_KERNELS.rotary(q, k, cos, sin)
    # Same roundings as torch; a product may still land one bf16 ulp apart.
    tol = dict(rtol=1.6e-2, atol=1e-2) if dtype == torch.bfloat16 else TOL[dtype]
    torch.testing.assert_close(got_q, want_q, **tol)
    torch.testing.assert_close(got_k, want_k, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_and_mul(fused, dtype):
    gate_up = rand(33, 2 * 14336, dtype=dtype)
    torch.testing.assert_close(
        fused.silu_and_mul(gate_up), TORCH_KERNELS.silu_and_mul(gate_up), **TOL[dtype]
    )


def test_cuda_platform_offers_the_fused_kernels():
    from pdcore_cuda.layer_kernels import TritonLayerKernels
    from pdcore_cuda.platform import CudaPlatform

    assert isinstance(CudaPlatform().layer_kernels(), TritonLayerKernels)
