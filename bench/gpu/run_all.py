"""GPU benchmarks of pdcore's engine on one card, all in one run (results/gpu_<card>.json).

The model is the real Llama-3.1-8B-Instruct architecture (config shipped next to
this file) with random bf16 weights made on the GPU: no hub, no checkpoint. HF
transformers and pdcore get the same weights.

* decode step at batch 1 and 64, 1k context, against two references: the HBM floor
  (the bytes a step reads: the weights it multiplies, the LM head, its embedding rows
  and its KV, over the measured copy bandwidth; see decode_floor.py) and a cuBLAS-only
  pass over the same linear weights replayed from a CUDA graph;
* prefill of 8k tokens: TFLOP/s against the measured bf16 matmul peak (the best of 50
  warmed-up products; the median's ratio is reported too);
* decode tokens/s of pdcore against HF ``generate()`` at batch 1 and 32, eager and
  with a static cache + compiled decode forward; medians on both sides.

Every ratio in the JSON comes with its inputs (bytes, seconds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from decode_floor import Dims, decode_step_bytes, floor_seconds, parameter_bytes
from gpu_references import copy_bandwidth, cublas_linear_reference, matmul_peak, sync_time

HERE = Path(__file__).parent
CONFIG = HERE / "llama-3.1-8b-instruct.config.json"
DTYPE_BYTES = 2  # bf16 weights and KV

__all__ = ["HERE", "copy_bandwidth", "decode_steps", "engine_for", "models", "sync_time"]


def models():
    from transformers import AutoConfig, AutoModelForCausalLM

    from pdcore.model.loader import _build, load_model_config
    from pdcore.model.registry import get_model_class

    folder = tempfile.mkdtemp()
    (Path(folder) / "config.json").write_text(CONFIG.read_text())
    hf_config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(
            hf_config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    config = load_model_config(folder)
    ours = _build(get_model_class(config.architecture), config, torch.bfloat16, "cuda")
    ours.load_weights((k, v) for k, v in hf.state_dict().items())
    ours.eval().requires_grad_(False)
    return hf, ours, config


def engine_for(model, config, attention: str | None, max_bs: int, graphs: bool):
    """An engine as ``pdcore serve`` builds it; ``attention``: ``--attention-backend``
    (None: each phase's default, as a server without the flag)."""
    from pdcore.config import ServerArgs
    from pdcore.engine.engine import Engine

    args = ServerArgs(
        max_total_tokens=max_bs * 1400 + 9000,
        page_size=16,
        chunked_prefill_size=8192,
        max_prefill_tokens=16384,
        max_running_requests=max_bs,
        cuda_graph_max_bs=max_bs,
        disable_cuda_graph=not graphs,
        attention_backend=attention,
    )
    return Engine(model, config, args, attention, "cuda")


def decode_steps(
    engine, batch: int, prompt_len: int, steps: int, tag: str, parts=None, overlap: bool = True
) -> float:
    """Seconds per engine decode step with ``batch`` running requests, steps run back
    to back as a server runs them (no sync between them: with overlap scheduling a step
    is launched before the last one's tokens are read, which a per-step sync would
    hide); the median of three windows of ``steps // 3`` steps.

    ``overlap``: overlap scheduling on or off for this measurement. ``parts``: a dict
    to receive the step's breakdown (graph replay alone, forward with input
    preparation, step with a sync after each) so host overhead is visible."""
    from pdcore.engine.io_struct import GenerateReq

    engine.overlap, was = overlap, engine.overlap
    gen = torch.Generator().manual_seed(batch)
    for i in range(batch):
        ids = torch.randint(10, 100000, (prompt_len,), generator=gen).tolist()
        sampling = {"temperature": 0.0, "max_new_tokens": 2 * steps + 50, "ignore_eos": True}
        engine.add_request(GenerateReq(f"{tag}-{i}", ids, sampling))
    while engine.scheduler.waiting or any(
        r.computed_len < len(r.input_ids) for r in engine.scheduler.running
    ):
        engine.step()
    for _ in range(5):
        engine.step()
    windows = []
    overlapped = engine.overlapped_steps
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps // 3):
            engine.step()
        torch.cuda.synchronize()
        windows.append((time.perf_counter() - start) / (steps // 3))
    if parts is not None:
        parts["overlapped_steps"] = engine.overlapped_steps - overlapped
    graphs = engine.runner.graphs
    if parts is not None and graphs is not None:
        engine.overlap = False
        engine.step()  # commits the step in flight; none follows
        parts["synced_step_ms"] = 1e3 * statistics.median(sync_time(engine.step, 15))
        bs = next(b for b in graphs.sizes if b >= batch)
        replays = graphs.replays
        parts["graph_replay_ms"] = 1e3 * statistics.median(sync_time(graphs.graphs[bs].replay, 30))
        engine.step()
        parts["step_used_graph"] = graphs.replays > replays
        batch_obj = engine.scheduler.schedule()
        parts["forward_ms"] = 1e3 * statistics.median(
            sync_time(lambda: engine.runner.forward(batch_obj), 30)
        )
    for i in range(batch):
        engine.abort(f"{tag}-{i}")
    while engine.has_work():
        engine.step()
    engine.overlap = was
    return statistics.median(windows)


def prefill_time(engine, tokens: int) -> float:
    from pdcore.engine.io_struct import GenerateReq

    gen = torch.Generator().manual_seed(7)
    times = []
    for rep in range(3):
        ids = torch.randint(10, 100000, (tokens,), generator=gen).tolist()
        engine.add_request(GenerateReq(f"prefill-{rep}", ids, {"max_new_tokens": 1}))
        torch.cuda.synchronize()
        start = time.perf_counter()
        while engine.has_work():
            engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def flops_prefill(config, tokens: int) -> float:
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    per_token = layers * 2 * (h * (h + 2 * kv) + h * h + 3 * h * inter)
    attention = layers * 2 * 2 * h * tokens * tokens / 2  # QK^T and PV, causal half
    return per_token * tokens + attention + 2 * h * config.vocab_size  # LM head: last row


def ratio(numerator_s: float, denominator_s: float, **inputs) -> dict:
    """A ratio with what it was computed from, so a reader can redo the arithmetic."""
    return {
        "ratio": numerator_s / denominator_s,
        "numerator_ms": numerator_s * 1e3,
        "denominator_ms": denominator_s * 1e3,
        **inputs,
    }


def decode_against_references(engine, model, dims: Dims, bandwidth: dict) -> dict:
    """Decode at batch 1 and 64, 1k context: pdcore's step (with and without overlap
    scheduling) against the HBM floor and the cuBLAS-only pass at the same batch."""
    out = {}
    for batch in (1, 64):
        parts: dict = {}
        # Both scheduling modes on the same engine and requests, one after the other.
        plain = decode_steps(engine, batch, 1024, 60, f"p{batch}", overlap=False)
        step = decode_steps(engine, batch, 1024, 60, f"d{batch}", parts)
        read = decode_step_bytes(dims, DTYPE_BYTES, batch, 1024)
        floor = floor_seconds(read["total"], bandwidth["bytes_per_s"])
        cublas = cublas_linear_reference(model, batch)
        floor_inputs = {
            "bytes_read": read,
            "copy_bandwidth_bytes_per_s": bandwidth["bytes_per_s"],
        }
        out[f"batch_{batch}"] = {
            "step_ms": step * 1e3,
            "no_overlap_step_ms": plain * 1e3,
            "hbm_floor_ms": floor * 1e3,
            "cublas_only_ms": cublas["median_ms"],
            "step_to_floor": ratio(step, floor, **floor_inputs),
            "no_overlap_step_to_floor": ratio(plain, floor, **floor_inputs),
            "step_to_cublas_only": ratio(step, cublas["median_s"], cublas_only=cublas),
            "cublas_only_to_floor": ratio(cublas["median_s"], floor, **floor_inputs),
            **parts,
        }
    return out


def prefill_against_peak(engine, config, peak: dict) -> dict:
    """8k-token prefill FLOP/s as a fraction of the best matmul product (the peak) and,
    for comparison, of the median product."""
    t = prefill_time(engine, 8192)
    flops = flops_prefill(config, 8192)
    achieved = flops / t

    def fraction(used: str) -> dict:
        best_or_median = peak["flop_per_product"] / peak[f"{used}_s"]
        return {
            "ratio": achieved / best_or_median,
            "prefill_flop": flops,
            "prefill_seconds": t,
            "peak_used": used,
            "peak_flop_per_s": best_or_median,
        }

    return {
        "seconds": t,
        "TFLOPs": achieved / 1e12,
        "fraction_of_peak": fraction("best"),
        "fraction_of_median_peak": fraction("median"),
    }


def decode_against_hf(engine, hf, compile_budget_s: int) -> dict:
    """pdcore's decode step at batch 1 and 32, 128 context, against HF eager, then
    against HF with a static cache and a compiled decode forward (switched once, after
    every eager measurement)."""
    import hf_decode

    out: dict = {}
    for batch in (1, 32):
        ours = decode_steps(engine, batch, 128, 40, f"h{batch}")
        eager = hf_decode.eager_step(hf, batch, 128, 32)
        out[f"batch_{batch}"] = {
            "pdcore_step_ms": ours * 1e3,
            "pdcore_reduced_by": "median of 3 windows",
            "pdcore_tok_s": batch / ours,
            "hf_eager": eager | {"tok_s": batch * 1e3 / eager["step_ms"]},
            "speedup_vs_hf_eager": ratio(eager["step_ms"] / 1e3, ours),
        }
    try:
        out["hf_compiled_method"] = hf_decode.make_compiled(hf)
    except Exception as e:  # an old transformers or torch: keep the eager rows
        out["hf_compiled_method"] = None
        for batch in (1, 32):
            out[f"batch_{batch}"]["hf_compiled"] = {"error": f"{type(e).__name__}: {e}"}
        return out
    for batch in (1, 32):
        row = out[f"batch_{batch}"]
        compiled = hf_decode.compiled_step(hf, batch, 128, 32, compile_budget_s=compile_budget_s)
        if "step_ms" in compiled:
            compiled["tok_s"] = batch * 1e3 / compiled["step_ms"]
            ours = row["pdcore_step_ms"] / 1e3
            row["speedup_vs_hf_compiled"] = ratio(compiled["step_ms"] / 1e3, ours)
        row["hf_compiled"] = compiled
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--attention", default=None, help="--attention-backend (default: the server's default)"
    )
    ap.add_argument(
        "--hf-compile-budget",
        type=int,
        default=900,
        metavar="SECONDS",
        help="time allowed for compiling HF's decode per batch size; past it the JSON "
        "records the error instead of a time (default 900)",
    )
    ap.add_argument("--out", default=None, help="default: results/gpu_<card>.json")
    args = ap.parse_args()
    import transformers

    card = torch.cuda.get_device_name()
    bandwidth, peak = copy_bandwidth(), matmul_peak()
    hf, ours, config = models()
    dims = Dims.from_config(json.loads(CONFIG.read_text()))
    counted = sum(p.numel() * p.element_size() for p in ours.parameters())
    result = {
        "card": card,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attention_flag": args.attention,
        "copy_bandwidth": bandwidth,
        "bf16_matmul_peak": peak,
        "parameter_bytes": counted,
        "parameter_bytes_from_config": parameter_bytes(dims, DTYPE_BYTES),
        "floor_method": "bytes a step reads (decode_floor.py) / best copy bandwidth",
    }
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out) if args.out else HERE / "results" / f"gpu_{slug}.json"
    out.parent.mkdir(exist_ok=True)

    def save() -> None:
        # Written after every section, so a run cut short keeps what it measured.
        out.write_text(json.dumps(result, indent=2) + "\n")

    engine = engine_for(ours, config, args.attention, 64, graphs=True)
    result["attention_backend"] = engine.attention_name  # prefill+decode where they differ
    result["cuda_graph_batch_sizes"] = engine.cuda_graph_sizes
    result["decode_1k_context"] = decode_against_references(engine, ours, dims, bandwidth)
    save()
    result["prefill_8k"] = prefill_against_peak(engine, config, peak)
    save()
    result["decode_vs_hf_128_context"] = decode_against_hf(engine, hf, args.hf_compile_budget)
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
