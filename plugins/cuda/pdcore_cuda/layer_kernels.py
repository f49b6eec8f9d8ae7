"""Fused Triton versions of the decoder's element-wise ops (``pdcore.model.kernels``).

Each replaces several torch launches with one: RMS norm, residual add + RMS
norm, rotary of q and k (one launch for both), SiLU-and-mul. They round where torch rounds (a
bfloat16 product is rounded before the next op uses it), so outputs match the
torch reference up to float32 summation order inside the norm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pdcore.model.kernels import LayerKernels


@triton.jit
def _rms_norm_kernel(
    X, R, W, Out, Sum, stride_xt, stride_xh, stride_rt, stride_ot, stride_st,
    heads, n, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    t = row // heads
    h = row % heads
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    # Every load first: at batch 1 the kernel is a chain of memory latencies, and the
    # weight load would otherwise wait for the reduction.
    w = tl.load(W + offs, mask=mask, other=0.0)
    x = tl.load(X + t.to(tl.int64) * stride_xt + h * stride_xh + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + t.to(tl.int64) * stride_rt + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(Sum + t.to(tl.int64) * stride_st + offs, x, mask=mask)
    x32 = x.to(tl.float32)
    var = tl.sum(x32 * x32, axis=0) / n
    y = (x32 * tl.rsqrt(var + eps)).to(X.dtype.element_ty)
    out = (w.to(tl.float32) * y.to(tl.float32)).to(Out.dtype.element_ty)
    tl.store(Out + row.to(tl.int64) * stride_ot + offs, out, mask=mask)


@triton.jit
def _rotate_row(
    X, Out, Cos, Sin, t, h, stride_xt, stride_xh, stride_ot, stride_oh, stride_ct,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    base = X + t * stride_xt + h * stride_xh
    x1 = tl.load(base + offs, mask=mask, other=0.0)
    x2 = tl.load(base + HALF + offs, mask=mask, other=0.0)
    dt = x1.dtype
    c1 = tl.load(Cos + t * stride_ct + offs, mask=mask, other=0.0).to(dt).to(tl.float32)
    c2 = tl.load(Cos + t * stride_ct + HALF + offs, mask=mask, other=0.0).to(dt).to(tl.float32)
    s1 = tl.load(Sin + t * stride_ct + offs, mask=mask, other=0.0).to(dt).to(tl.float32)
    s2 = tl.load(Sin + t * stride_ct + HALF + offs, mask=mask, other=0.0).to(dt).to(tl.float32)
    a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
    # torch: x * cos + cat(-x2, x1) * sin, each product rounded to the input dtype.
    o1 = (a1 * c1).to(dt).to(tl.float32) + (-a2 * s1).to(dt).to(tl.float32)
    o2 = (a2 * c2).to(dt).to(tl.float32) + (a1 * s2).to(dt).to(tl.float32)
    out = Out + t * stride_ot + h * stride_oh
    tl.store(out + offs, o1.to(dt), mask=mask)
    tl.store(out + HALF + offs, o2.to(dt), mask=mask)


@triton.jit
def _rotary_qk_kernel(
    Q, K, QOut, KOut, Cos, Sin, stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_ct, q_heads,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One launch for q and k: programs ``h < q_heads`` rotate q's heads, the rest k's."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if h < q_heads:
        _rotate_row(
            Q, QOut, Cos, Sin, t, h, stride_qt, stride_qh, stride_qot, stride_qoh, stride_ct,
            HALF, BLOCK,
        )  # fmt: skip
    else:
        _rotate_row(
            K, KOut, Cos, Sin, t, h - q_heads, stride_kt, stride_kh, stride_kot, stride_koh,
            stride_ct, HALF, BLOCK,
        )  # fmt: skip


@triton.jit
def _silu_mul_kernel(X, Out, stride_xt, stride_ot, n, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(X + t * stride_xt + offs, mask=mask, other=0.0)
    u = tl.load(X + t * stride_xt + n + offs, mask=mask, other=0.0)
    g32 = g.to(tl.float32)
    s = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype)
    out = (s.to(tl.float32) * u.to(tl.float32)).to(g.dtype)
    tl.store(Out + t * stride_ot + offs, out, mask=mask)


class TritonLayerKernels(LayerKernels):
    name = "triton"

    def __init__(self):
        from pdcore_cuda.small_linear import SmallLinear

        self._small_linear = SmallLinear()

    def linear(self, x, weight, bias=None):
        if bias is not None:
            return super().linear(x, weight, bias)
        return self._small_linear(x, weight)

    def _norm(self, x, weight, eps, residual=None):
        n = x.shape[-1]
        if x.stride(-1) != 1:
            x = x.contiguous()
        heads = x.shape[1] if x.dim() == 3 else 1
        rows = x.shape[0] * heads
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        total = torch.empty_like(out) if residual is not None else out
        res = residual if residual is not None else x
        _rms_norm_kernel[(rows,)](
            x, res, weight, out, total,
            x.stride(0), x.stride(1) if x.dim() == 3 else 0, res.stride(0),
            n, total.stride(0), heads, n, eps,
            HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(n),
        )  # fmt: skip
        return out, total

    def rms_norm(self, x, weight, eps):
        if weight.dtype != x.dtype or x.dim() not in (2, 3):
            return super().rms_norm(x, weight, eps)
        return self._norm(x, weight, eps)[0]

    def add_rms_norm(self, x, residual, weight, eps):
        if weight.dtype != x.dtype or x.dim() != 2 or residual.stride(-1) != 1:
            return super().add_rms_norm(x, residual, weight, eps)
        return self._norm(x, weight, eps, residual)

    def rotary(self, q, k, cos, sin):
        if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1:
            return super().rotary(q, k, cos, sin)
        tokens, q_heads, dim = q.shape
        q_out = torch.empty((tokens, q_heads, dim), dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        half = dim // 2
        _rotary_qk_kernel[(tokens, q_heads + k.shape[1])](
            q, k, q_out, k_out, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cos.stride(0),
            q_heads, HALF=half, BLOCK=triton.next_power_of_2(half),
        )  # fmt: skip
        return q_out, k_out

    def silu_and_mul(self, gate_up):
        if gate_up.dim() != 2 or gate_up.stride(-1) != 1:
            return super().silu_and_mul(gate_up)
        tokens, n = gate_up.shape[0], gate_up.shape[1] // 2
        out = torch.empty((tokens, n), dtype=gate_up.dtype, device=gate_up.device)
        block = 1024
        _silu_mul_kernel[(tokens, triton.cdiv(n, block))](
            gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block
        )
        return out
