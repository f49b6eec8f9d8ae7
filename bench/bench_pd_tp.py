"""Heterogeneous-TP KV transfer on one CPU machine.

A random Qwen3-architecture checkpoint (8 layers, 8 query / 2 KV heads of 64,
float32: 8 KiB of KV per token) is served by a prefill and a decode server in
four shapes: P TP=1 -> D TP=1 (direct page writes, no staging), P TP=2 -> D
TP=2 (equal TP), P TP=2 -> D TP=1 and P TP=1 -> D TP=2. Each shape serves the
same 2048-token prompts one at a time; prefill's ``/get_server_info``
counters give, per request, the KV bytes, the seconds spent moving them
(gather across prefill's ranks + staging copies + engine writes) and the
transfer descriptors (runs) posted. Goal: heterogeneous rate >= 70% of the
equal-TP rate. All four shapes run back to back in one invocation per backend.

``python bench/bench_pd_tp.py --backend mooncake|nixl``; results go to
``bench/results/pd_tp_<backend>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_pd import HOST, Server, free_port, gen_body, machine  # noqa: E402

SHAPES = {"P1->D1": (1, 1), "P2->D2": (2, 2), "P2->D1": (2, 1), "P1->D2": (1, 2)}
CONFIG = dict(
    hidden_size=512,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=4096,
    max_position_embeddings=4096,
)


def make_checkpoint(folder: Path) -> None:
    import torch
    import transformers

    from pdcore.model.embedded import embedded_model_path
    from pdcore.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_pretrained(str(embedded_model_path()))
    cfg = transformers.Qwen3Config(**CONFIG, eos_token_id=tok.eos_token_ids[0])
    cfg.vocab_size = tok.vocab_size
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    tok.hf.save_pretrained(folder)


async def one(client, prefill: Server, decode: Server, bport: int, ids: list[int]) -> dict:
    before = prefill.pd_stats()
    body = gen_body(ids, 2, bootstrap_host=HOST, bootstrap_port=bport,
                    bootstrap_room=random.getrandbits(63) or 1)  # fmt: skip
    p, d = await asyncio.gather(
        client.post(f"{prefill.url}/generate", json=body),
        client.post(f"{decode.url}/generate", json=body),
    )
    if (p.status_code, d.status_code) != (200, 200):
        raise RuntimeError(f"HTTP {p.status_code}/{d.status_code}: {p.text[:300]} {d.text[:300]}")
    deadline = time.monotonic() + 30
    while True:
        after = prefill.pd_stats()
        if after["rooms_succeeded"] + after["rooms_failed"] > (
            before["rooms_succeeded"] + before["rooms_failed"]
        ):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("prefill never finished the room")
        await asyncio.sleep(0.05)
    return {
        "bytes": after["bytes_transferred"] - before["bytes_transferred"],
        "seconds": after["transfer_seconds"] - before["transfer_seconds"],
        "descriptors": after["runs_written"] - before["runs_written"],
        "output_ids": d.json()["output_ids"],
    }


def run_shape(model: str, backend: str, p_tp: int, d_tp: int, prompts) -> dict:
    bport = free_port()
    common = ["--model-path", model, "--page-size", "16", "--chunked-prefill-size", "1024",
              "--max-total-tokens", "16384",
              "--disaggregation-transfer-backend", backend]  # fmt: skip
    prefill = Server(*common, "--disaggregation-mode", "prefill", "--tp-size", str(p_tp),
                     "--disaggregation-bootstrap-port", str(bport))  # fmt: skip
    try:
        decode = Server(*common, "--disaggregation-mode", "decode", "--tp-size", str(d_tp))
    except BaseException:
        prefill.stop()
        raise
    try:

        async def all_prompts():
            async with httpx.AsyncClient(timeout=600) as client:
                await one(client, prefill, decode, bport, prompts[0])  # warm-up
                return [await one(client, prefill, decode, bport, p) for p in prompts[1:]]

        reqs = asyncio.run(all_prompts())
    finally:
        decode.stop()
        prefill.stop()
    rates = [r["bytes"] / r["seconds"] for r in reqs]
    return {
        "prefill_tp": p_tp,
        "decode_tp": d_tp,
        "requests": [{k: v for k, v in r.items() if k != "output_ids"} for r in reqs],
        "output_ids": [r["output_ids"] for r in reqs],
        "bytes_per_request": reqs[0]["bytes"],
        "median_bytes_per_s": statistics.median(rates),
        "descriptors_per_request": statistics.median(r["descriptors"] for r in reqs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="mooncake", choices=["mooncake", "nixl"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--out")
    a = ap.parse_args()
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(a.tokens)] for _ in range(a.requests + 1)]
    res = {"backend": a.backend, "machine": machine(), "model": CONFIG, "tokens": a.tokens}
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(Path(tmp))
        res["shapes"] = {
            name: run_shape(tmp, a.backend, p, d, prompts) for name, (p, d) in SHAPES.items()
        }
    equal = res["shapes"]["P2->D2"]["median_bytes_per_s"]
    for name in ("P2->D1", "P1->D2"):
        res["shapes"][name]["ratio_vs_equal_tp"] = res["shapes"][name]["median_bytes_per_s"] / equal
    same = {
        n: s["output_ids"] == res["shapes"]["P1->D1"]["output_ids"]
        for n, s in res["shapes"].items()
    }
    res["outputs_equal_across_shapes"] = same
    for name, s in res["shapes"].items():
        print(f"{name}: {s['median_bytes_per_s'] / 2**20:.0f} MiB/s, "
              f"{s['descriptors_per_request']} descriptors/request, "
              f"ratio {s.get('ratio_vs_equal_tp', 1):.2f}")  # fmt: skip
    out = Path(a.out or HERE / "results" / f"pd_tp_{a.backend}.json")
    out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
