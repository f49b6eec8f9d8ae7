"""Where a batch-1 decode step's time goes (the floor ratio of run_all.py), on one GPU.

Same model as ``run_all.py`` (Llama-3.1-8B architecture, random bf16 weights):

* ``gemv``: each linear layer of one decoder layer (and the LM head) alone at
  batch 1, as GB/s of weight read, next to the device copy bandwidth;
* ``graph_kernels``: the kernels inside one captured decode graph replay, summed
  by name (torch profiler, CUPTI), so the replay's excess over the floor has names;
* ``host``: cProfile of ``engine.step`` at batch 1, the Python work between replays.

Writes ``results/profile_decode_<card>.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch
from run_all import HERE, copy_bandwidth, decode_steps, engine_for, models, sync_time


def gemv_rates(config) -> list[dict]:
    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    shapes = {
        "qkv_proj": (q + 2 * kv, h),
        "o_proj": (h, q),
        "gate_up_proj": (2 * inter, h),
        "down_proj": (h, inter),
        "lm_head": (config.vocab_size, h),
    }
    out = []
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        t = statistics.median(sync_time(lambda w=w, x=x: torch.nn.functional.linear(x, w), 50))
        mv = statistics.median(sync_time(lambda w=w, x=x: torch.mv(w, x[0]), 50))
        out.append(
            {"name": name, "shape": [n, k], "us": t * 1e6, "GBps": n * k * 2 / t / 1e9,
             "mv_us": mv * 1e6}
        )  # fmt: skip
        del w
    return out


def graph_kernels(engine, steps: int = 10) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    graphs = engine.runner.graphs
    replay = graphs.graphs[graphs.sizes[0]].replay
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            replay()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        dev_us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if dev_us <= 0:
            continue
        rows.append(
            {
                "kernel": ev.key[:120],
                "calls_per_step": ev.count / steps,
                "us_per_step": dev_us / steps,
            }
        )
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def host_profile(engine, steps: int = 200) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def launch_probe(engine, repeats: int = 30) -> dict:
    """How long ``replay()`` holds the CPU, and the GPU time from an event recorded
    just before it to one just after: if the second exceeds the kernels' sum by about
    the first, the GPU waits for the launch itself."""
    graphs = engine.runner.graphs
    graph = graphs.graphs[graphs.sizes[0]]
    cpu, gpu = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        before = torch.cuda.Event(enable_timing=True)
        after = torch.cuda.Event(enable_timing=True)
        before.record()
        t0 = time.perf_counter()
        graph.replay()
        cpu.append(time.perf_counter() - t0)
        after.record()
        after.synchronize()
        gpu.append(before.elapsed_time(after) / 1e3)
    return {
        "replay_call_cpu_ms": 1e3 * statistics.median(cpu),
        "event_to_event_gpu_ms": 1e3 * statistics.median(gpu),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--attention", default="triton")
    ap.add_argument("--out", default=None, help="result file (default: results/...)")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    result: dict = {
        "card": card,
        "torch": torch.__version__,
        "copy_GBps": copy_bandwidth()["best_GBps"],
    }
    _, ours, config = models()  # HF's copy is dropped: only pdcore runs here
    torch.cuda.empty_cache()
    result["gemv"] = gemv_rates(config)
    for g in result["gemv"]:
        line = f"{g['name']:>14} {g['shape']} {g['us']:8.1f} us {g['GBps']:6.0f} GB/s"
        print(f"{line}  torch.mv {g['mv_us']:.1f} us")
    engine = engine_for(ours, config, args.attention, 64, graphs=True)
    parts: dict = {}
    step = decode_steps(engine, 1, 1024, 40, "warm", parts)
    result["decode_batch1"] = {"step_ms": step * 1e3, **parts}
    print(result["decode_batch1"])
    # One running request for the graph and host profiles.
    from pdcore.engine.io_struct import GenerateReq

    ids = list(range(100, 1124))
    engine.add_request(
        GenerateReq("p", ids, {"temperature": 0.0, "max_new_tokens": 400, "ignore_eos": True})
    )
    while any(r.computed_len < len(r.input_ids) for r in engine.scheduler.running) or (
        engine.scheduler.waiting
    ):
        engine.step()
    for _ in range(5):
        engine.step()
    result["graph_kernels"] = graph_kernels(engine)
    total = sum(r["us_per_step"] for r in result["graph_kernels"])
    result["graph_kernels_total_us"] = total
    print(f"kernels in one replay: {total:.0f} us")
    for r in result["graph_kernels"][:25]:
        print(f"{r['us_per_step']:9.1f} us  x{r['calls_per_step']:5.0f}  {r['kernel']}")
    result["launch"] = launch_probe(engine)
    print(result["launch"])
    result["host_profile"] = host_profile(engine)
    print(result["host_profile"])
    chooser = getattr(engine.runner.ctx.kernels, "_small_linear", None)
    if chooser is not None:  # which linear shapes run the Triton small-batch kernel
        result["small_linear"] = [
            {"rows_n_k": list(key[:3]), "cublas_us": c * 1e6, "triton_us": t * 1e6}
            for key, (c, t) in chooser.timings.items()
        ]
        for r in result["small_linear"]:
            c, t = r["cublas_us"], r["triton_us"]
            print(f"linear {r['rows_n_k']}: cuBLAS {c:.1f} us, Triton {t:.1f} us")
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out) if args.out else HERE / "results" / f"profile_decode_{slug}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
