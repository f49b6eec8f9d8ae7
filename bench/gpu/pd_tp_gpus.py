"""PD with tensor parallelism on one 4-GPU host.

Prefill TP=2 on GPUs 0-1 and decode TP=2 on GPUs 2-3 (NCCL inside each
server, KV over NIXL/UCX between them), then the heterogeneous shapes prefill
TP=2 -> decode TP=1 (GPU 2) and prefill TP=1 (GPU 0) -> decode TP=2 (GPUs 2-3).
Each shape answers the same greedy requests as null-mode servers at TP=1 and
TP=2 (decode's TP is the reference: it computes every token after the first);
then one long prompt measures the KV rate prefill reports (bytes ÷
seconds in gather + staging + writes) and the descriptors it posted.

``python bench/gpu/pd_tp_gpus.py --model-path DIR [--backend nixl]``; results go
to ``bench/gpu/results/pd_tp_gpus_<backend>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from pd_two_gpus import Server, body, free_port, post_all  # noqa: E402

SHAPES = {  # name: (prefill tp, prefill base gpu, decode tp, decode base gpu)
    "P tp2 (GPU 0-1) -> D tp2 (GPU 2-3)": (2, 0, 2, 2),
    "P tp2 (GPU 0-1) -> D tp1 (GPU 2)": (2, 0, 1, 2),
    "P tp1 (GPU 0) -> D tp2 (GPU 2-3)": (1, 0, 2, 2),
}


def prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(5, 2000) for _ in range(n)] for n in (5, 40, 300, 700, 9, 64, 65, 1)]


def common(model: str) -> list[str]:
    return ["--model-path", model, "--device", "cuda", "--page-size", "16",
            "--chunked-prefill-size", "2048", "--max-total-tokens", "32768"]  # fmt: skip


def run_shape(model: str, backend: str, shape, refs, long_prompt) -> dict:
    p_tp, p_gpu, d_tp, d_gpu = shape
    boot = free_port()
    pd = ["--disaggregation-transfer-backend", backend]
    prefill = Server(*common(model), *pd, "--disaggregation-mode", "prefill",
                     "--tp-size", str(p_tp), "--base-gpu-id", str(p_gpu),
                     "--disaggregation-bootstrap-port", str(boot))  # fmt: skip
    decode = Server(*common(model), *pd, "--disaggregation-mode", "decode",
                    "--tp-size", str(d_tp), "--base-gpu-id", str(d_gpu))  # fmt: skip
    try:

        def pairs(ps):
            out = []
            for p in ps:
                e = dict(bootstrap_host="127.0.0.1", bootstrap_port=boot,
                         bootstrap_room=random.getrandbits(63) or 1)  # fmt: skip
                out += [(prefill.url, body(p, **e)), (decode.url, body(p, **e))]
            return out

        out = asyncio.run(post_all(pairs(prompts())))
        decoded = out[1::2]
        equal = {
            f"null_tp{tp}": [
                d[1].get("output_ids") == r[1]["output_ids"]
                for d, r in zip(decoded, ref, strict=True)
            ]
            for tp, ref in refs.items()
        }
        time.sleep(1)
        before = prefill.info()["disaggregation"]
        rates = []
        for _ in range(3):
            t0 = prefill.info()["disaggregation"]
            statuses = [s for s, _ in asyncio.run(post_all(pairs([long_prompt])))]
            time.sleep(0.5)
            t1 = prefill.info()["disaggregation"]
            nbytes = t1["bytes_transferred"] - t0["bytes_transferred"]
            secs = t1["transfer_seconds"] - t0["transfer_seconds"]
            rates.append({
                "bytes": nbytes,
                "seconds": secs,
                "GBps": nbytes / secs / 1e9 if secs else None,
                "descriptors": t1["runs_written"] - t0["runs_written"],
                "statuses": statuses,
            })  # fmt: skip
        p_info, d_info = prefill.info(), decode.info()
        return {
            "statuses": [s for s, _ in out],
            "outputs_equal_null_mode": equal,
            # Decode computes every token after the first: its TP's null mode is the
            # reference (bf16 sums in another order may flip near-ties otherwise).
            "all_equal_decode_tp_null": all(equal[f"null_tp{shape[2]}"]),
            "prefill_engine": p_info["engine_info"],
            "decode_engine": d_info["engine_info"],
            "long_prompt_tokens": len(long_prompt),
            "long_prompt_transfers": rates,
            "best_GBps": max(r["GBps"] or 0 for r in rates),
            "prefill_disaggregation_before_long": before,
            "used_pages_after": [
                p_info["kv_cache"]["used_pages"],
                d_info["kv_cache"]["used_pages"],
            ],
        }
    finally:
        decode.stop()
        prefill.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--backend", default="nixl")
    ap.add_argument("--long-tokens", type=int, default=4000)
    ap.add_argument("--out")
    a = ap.parse_args()
    refs, null_engines = {}, {}
    for tp in (1, 2):
        null = Server(*common(a.model_path), "--tp-size", str(tp), "--base-gpu-id", "0")
        try:
            refs[tp] = asyncio.run(post_all([(null.url, body(p)) for p in prompts()]))
            null_engines[tp] = null.info()["engine_info"]
        finally:
            null.stop()
    rng = random.Random(1)
    long_prompt = [rng.randrange(5, 2000) for _ in range(a.long_tokens)]
    results = {"backend": a.backend, "null_engines": null_engines, "shapes": {}}
    for name, shape in SHAPES.items():
        try:
            results["shapes"][name] = run_shape(a.model_path, a.backend, shape, refs, long_prompt)
        except Exception as e:  # record and go on: one shape failing must not hide others
            results["shapes"][name] = {"error": f"{type(e).__name__}: {e}"[-3000:]}
        print(name, json.dumps(results["shapes"][name])[:600], flush=True)
    out = Path(a.out or HERE / "results" / f"pd_tp_gpus_{a.backend}.json")
    out.write_text(json.dumps(results, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
