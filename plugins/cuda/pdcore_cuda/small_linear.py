"""``y = x @ W.T`` for a few rows (decode at small batch), where cuBLAS streams W slowly.

A decode step at batch 1 reads every weight once, so each linear layer should run
at the card's copy bandwidth. cuBLAS does for most of Llama-3.1-8B's shapes, but
picks a kernel for the square ``o_proj`` (4096 x 4096) that reads it at ~1.6 TB/s
on an H100 (bench/gpu/profile_decode.py), ~0.3 ms of a 6.8 ms step over 32 layers.
This kernel streams W in ``[BLOCK_N, BLOCK_K]`` tiles through tensor cores (x padded
to 16, 32 or 64 rows; wasted math is free when memory-bound).

Neither wins everywhere, so ``SmallLinear`` times both once per shape, the way a
decode step runs them (inside a CUDA graph, over enough weight copies that L2
cannot hold them), and keeps the faster. Rows beyond ``MAX_ROWS``, other dtypes
and non-contiguous operands go to ``F.linear``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

log = logging.getLogger(__name__)
MAX_ROWS = 64
L2_BYTES = 128 << 20  # above any current card's L2: timed weights stream from HBM


@triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in (
            (16, 256, 4, 4),
            (16, 512, 4, 3),
            (32, 256, 4, 4),
            (32, 512, 4, 3),
            (32, 256, 8, 4),
            (64, 128, 4, 4),
            (64, 256, 8, 3),
            (16, 1024, 8, 2),
        )
    ],
    key=["N", "K", "BLOCK_M"],
)
@triton.jit
def _small_linear_kernel(
    X, W, Y, M, N, K, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    w_rows = W + offs_n[:, None].to(tl.int64) * stride_wn
    x_rows = X + offs_m[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    out = Y + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(out, acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def small_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` by the Triton kernel: ``x`` ``[M <= MAX_ROWS, K]``, ``w`` ``[N, K]``,
    both contiguous, same 16-bit dtype."""
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS or w.shape[1] != k:
        raise ValueError(f"small_linear: x {tuple(x.shape)}, w {tuple(w.shape)}")
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    block_m = 16 if m <= 16 else 32 if m <= 32 else 64  # tl.dot tiles: 16 rows and up
    _small_linear_kernel[grid](
        x, w, y, m, n, k, x.stride(0), w.stride(0), y.stride(0), BLOCK_M=block_m
    )
    return y


def eligible(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_ROWS
        and x.dtype in (torch.bfloat16, torch.float16)
        and w.dtype == x.dtype
        and x.is_contiguous()
        and w.is_contiguous()
    )


def graph_time(fn, weights: list[torch.Tensor], x: torch.Tensor, replays: int = 20) -> float:
    """Seconds per call of ``fn(x, w)``, replayed inside a CUDA graph over ``weights``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights:
            fn(x, w)  # compile / autotune outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for w in weights:
                fn(x, w)
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(replays):
            graph.replay()
        end.record(stream)
        end.synchronize()
    torch.cuda.current_stream().wait_stream(stream)
    return start.elapsed_time(end) / 1e3 / (replays * len(weights))


class SmallLinear:
    """``linear(x, w)``: per (rows, N, K, dtype), the faster of cuBLAS and the Triton kernel."""

    def __init__(self):
        self.choice: dict[tuple, bool] = {}  # True: the Triton kernel
        self.timings: dict[tuple, tuple[float, float]] = {}  # (cuBLAS s, Triton s)

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not eligible(x, w):
            return F.linear(x, w)
        key = (x.shape[0], w.shape[0], w.shape[1], x.dtype)
        use = self.choice.get(key)
        if use is None:
            if torch.cuda.is_current_stream_capturing():
                return F.linear(x, w)  # cannot time here; the warm-up before capture decides
            use = self.choice[key] = self._decide(key, x, w)
        return small_linear(x, w) if use else F.linear(x, w)

    def _decide(self, key, x: torch.Tensor, w: torch.Tensor) -> bool:
        copies = max(1, -(-L2_BYTES // (w.numel() * w.element_size())))
        weights = [w]
        try:  # the copies need free memory: an out-of-memory error only means cuBLAS
            weights += [w.clone() for _ in range(copies - 1)]
            ours = graph_time(small_linear, weights, x)
            theirs = graph_time(F.linear, weights, x)
        except Exception as e:  # never fatal: cuBLAS is always right
            log.warning("small_linear disabled for %s: %s", key, e)
            return False
        finally:
            del weights
        self.timings[key] = (theirs, ours)
        log.info(
            "linear %s: cuBLAS %.1f us, Triton %.1f us -> %s",
            key[:3],
            theirs * 1e6,
            ours * 1e6,
            "Triton" if ours < theirs else "cuBLAS",
        )
        return ours < 0.97 * theirs  # a clear win only
