"""Single-GPU benchmarks, all in one run on one card (results/gpu_<card>.json).

The model is the real Llama-3.1-8B-Instruct architecture (config shipped next to
this file) with random bf16 weights made on the GPU: no hub, no checkpoint. HF
transformers and pdcore get the same weights.

* decode step at batch 1 and 64, 1k context, vs the HBM floor (weights + KV
  bytes read once / measured device copy bandwidth);
* prefill of 8k tokens: TFLOP/s vs measured bf16 matmul peak;
* decode tokens/s of pdcore vs HF ``generate()`` at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
CONFIG = HERE / "llama-3.1-8b-instruct.config.json"


def sync_time(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def copy_bandwidth() -> float:
    """Device memory bandwidth in bytes/s: read + write of a 4 GiB copy."""
    src = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = min(sync_time(lambda: dst.copy_(src), 10))
    return 2 * (4 << 30) / t


def matmul_peak() -> float:
    """bf16 FLOP/s of a large square matmul (the practical tensor-core peak)."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = statistics.median(sync_time(lambda: a @ b, 20))
    return 2 * n**3 / t


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


@torch.inference_mode()
def hf_decode_step(hf, batch: int, prompt_len: int, new: int) -> float:
    """Seconds per decode step of HF generate(): (T(new+1) - T(1)) / new."""
    ids = torch.randint(10, 100000, (batch, prompt_len), device="cuda")

    def gen(n):
        hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    gen(2)
    one = min(sync_time(lambda: gen(1), 2))
    many = min(sync_time(lambda: gen(new + 1), 2))
    return (many - one) / new


def flops_prefill(config, tokens: int) -> float:
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    per_token = layers * 2 * (h * (h + 2 * kv) + h * h + 3 * h * inter)
    attention = layers * 2 * 2 * h * tokens * tokens / 2  # QK^T and PV, causal half
    return per_token * tokens + attention + 2 * h * config.vocab_size  # LM head: last row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--attention", default=None, help="--attention-backend (default: the server's default)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    bandwidth, peak = copy_bandwidth(), matmul_peak()
    hf, ours, config = models()
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    kv_token_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2
    result = {
        "card": card,
        "torch": torch.__version__,
        "attention_flag": args.attention,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "bf16_matmul_peak_TFLOPs": peak / 1e12,
        "weight_bytes": weight_bytes,
    }
    engine = engine_for(ours, config, args.attention, 64, graphs=True)
    result["attention_backend"] = engine.attention_name  # prefill+decode where they differ
    result["cuda_graph_batch_sizes"] = engine.cuda_graph_sizes
    decode = {}
    for batch in (1, 64):
        parts: dict = {}
        # Both scheduling modes on the same engine and requests, one after the other.
        plain = decode_steps(engine, batch, 1024, 60, f"p{batch}", overlap=False)
        step = decode_steps(engine, batch, 1024, 60, f"d{batch}", parts)
        floor = (weight_bytes + batch * 1024 * kv_token_bytes) / bandwidth
        decode[f"batch_{batch}"] = {
            "step_ms": step * 1e3,
            "hbm_floor_ms": floor * 1e3,
            "ratio_to_floor": step / floor,
            "no_overlap_step_ms": plain * 1e3,
            "no_overlap_ratio_to_floor": plain / floor,
            **parts,
        }
    result["decode_1k_context"] = decode
    t = prefill_time(engine, 8192)
    achieved = flops_prefill(config, 8192) / t
    result["prefill_8k"] = {
        "seconds": t,
        "TFLOPs": achieved / 1e12,
        "fraction_of_peak": achieved / peak,
    }
    vs_hf = {}
    for batch in (1, 32):
        ours_step = decode_steps(engine, batch, 128, 40, f"h{batch}")
        hf_step = hf_decode_step(hf, batch, 128, 32)
        vs_hf[f"batch_{batch}"] = {
            "pdcore_tok_s": batch / ours_step,
            "hf_tok_s": batch / hf_step,
            "speedup": hf_step / ours_step,
            "pdcore_step_ms": ours_step * 1e3,
            "hf_step_ms": hf_step * 1e3,
        }
    result["decode_vs_hf_128_context"] = vs_hf
    text = json.dumps(result, indent=2)
    print(text)
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out) if args.out else HERE / "results" / f"gpu_{slug}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
