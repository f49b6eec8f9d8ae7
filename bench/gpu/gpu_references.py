"""What the card itself can do, measured in the same run as pdcore: the copy bandwidth
(for the HBM floor), the bf16 matmul peak (for prefill) and a cuBLAS-only pass over a
model's linear weights (an achievable decode reference, unlike the floor).

Each timing warms up first and reports the median and the best of many CUDA-event
timed runs; the JSON says which one a ratio uses."""

from __future__ import annotations

import statistics
import time

import torch


def sync_time(fn, repeat: int) -> list[float]:
    """Wall seconds of ``fn`` between two device syncs, ``repeat`` times."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def event_times(fn, warmup: int, timed: int) -> list[float]:
    """Seconds of each of ``timed`` runs of ``fn`` by CUDA events, after ``warmup``
    untimed ones (clocks up, kernels chosen, caches allocated)."""
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(timed):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in pairs]


def summary(seconds: list[float]) -> dict:
    return {
        "runs": len(seconds),
        "median_s": statistics.median(seconds),
        "best_s": min(seconds),
    }


def copy_bandwidth() -> dict:
    """Device memory bandwidth: read + write of a 4 GiB device copy; the best of 20
    timed copies after 3 untimed is what the floor uses (the rate the card reached)."""
    size = 4 << 30
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    stats = summary(event_times(lambda: dst.copy_(src), warmup=3, timed=20))
    moved = 2 * size
    return {
        **stats,
        "bytes_moved": moved,
        "median_GBps": moved / stats["median_s"] / 1e9,
        "best_GBps": moved / stats["best_s"] / 1e9,
        "used": "best",
        "bytes_per_s": moved / stats["best_s"],
    }


def matmul_peak(n: int = 8192, warmup: int = 10, timed: int = 50) -> dict:
    """bf16 FLOP/s of an ``n``^3 product (the practical tensor-core peak): ``warmup``
    untimed products, then ``timed`` ones each timed by CUDA events. "peak" is the best
    product; the median is reported beside it."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    stats = summary(event_times(lambda: torch.matmul(a, b, out=c), warmup, timed))
    flops = 2 * n**3
    return {
        "n": n,
        "warmup_products": warmup,
        **stats,
        "flop_per_product": flops,
        "median_TFLOPs": flops / stats["median_s"] / 1e12,
        "best_TFLOPs": flops / stats["best_s"] / 1e12,
        "used": "best",
        "flop_per_s": flops / stats["best_s"],
    }


def linear_weights(model) -> list[tuple[str, torch.Tensor]]:
    """The 2-D weights a decode step multiplies: every projection and the LM head (the
    embedding table when tied), not the embedding table a step only gathers rows of."""
    weights = [
        (name, p)
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed_tokens" not in name
    ]
    if getattr(model, "lm_head", None) is None:
        weights.append(("lm_head (tied embedding)", model.model.embed_tokens.weight))
    return weights


def cublas_linear_reference(model, batch: int, replays: int = 30) -> dict:
    """One pass over ``model``'s linear weights as cuBLAS runs them, ``x @ W.T`` with
    ``torch.matmul`` at ``batch`` rows, captured in one CUDA graph and replayed: what a
    decode step costs if nothing but its matmuls ran, with no launch gaps. Every weight
    is its own tensor (15 GB for the 8B model), so nothing stays in L2 between uses."""
    weights = [w for _, w in linear_weights(model)]
    dtype = weights[0].dtype
    inputs = {
        k: torch.randn(batch, k, device="cuda", dtype=dtype) for k in {w.shape[1] for w in weights}
    }
    outputs = [torch.empty(batch, w.shape[0], device="cuda", dtype=dtype) for w in weights]

    def one_pass():
        for w, out in zip(weights, outputs, strict=True):
            torch.matmul(inputs[w.shape[1]], w.t(), out=out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuBLAS picks its kernels and workspaces before capture
        for _ in range(3):
            one_pass()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_pass()
    stats = summary(event_times(graph.replay, warmup=5, timed=replays))
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    return {
        "batch": batch,
        "matmuls": len(weights),
        "weight_bytes": weight_bytes,
        **stats,
        "median_ms": stats["median_s"] * 1e3,
        "best_ms": stats["best_s"] * 1e3,
        "used": "median",
        "weight_GBps": weight_bytes / stats["median_s"] / 1e9,
    }
