"""pdcore vs HF transformers on one CPU machine, side by side in one run.

pdcore: a real server (``python -m pdcore.launch_server``) receives all requests
at once over HTTP (streaming ``/generate``) and batches them continuously.
HF: ``generate()`` on the same prompts, one at a time and as one padded batch.
Every request has exactly ``--input-len`` prompt tokens and produces exactly
``--output-len`` tokens (``ignore_eos`` / ``min_new_tokens``), so the token
counts are equal on both sides. With ``--mixed-lengths`` each request draws its
prompt and output length uniformly from [16, 2 * len]; HF's batch then pads
prompts and runs to the longest output, and only each request's own tokens
count as output on either side. Results go to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import httpx

from pdcore.up.launch import start_server

RESULTS = Path(__file__).parent / "results"


def make_prompts(tokenizer, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Distinct prompts of exactly the given lengths (random words, re-tokenized)."""
    rng = random.Random(seed)
    words = [
        "river",
        "cloud",
        "engine",
        "page",
        "token",
        "green",
        "quickly",
        "model",
        "server",
        "paper",
        "stone",
        "light",
        "music",
        "window",
        "garden",
        "number",
    ]
    prompts = []
    for length in lengths:
        ids: list[int] = []
        while len(ids) < length:
            ids = tokenizer.encode(" ".join(rng.choice(words) for _ in range(length * 2)))
        prompts.append(ids[:length])
    return prompts


async def one_request(client, url, ids, output_len):
    body = {
        "input_ids": ids,
        "stream": True,
        "sampling_params": {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True},
    }
    start = time.perf_counter()
    ttft, stamps, tokens = None, [], 0
    async with client.stream("POST", f"{url}/generate", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[5:])
            n = chunk["meta_info"]["completion_tokens"]
            if n > tokens:
                ttft = ttft if ttft is not None else now - start
                stamps.append(now)
                tokens = n
    return {
        "ttft": ttft,
        "e2e": time.perf_counter() - start,
        "tokens": tokens,
        "itl": [b - a for a, b in itertools.pairwise(stamps)],
    }


async def run_pdcore(url, prompts, output_lens):
    async with httpx.AsyncClient(timeout=None) as client:
        await one_request(client, url, prompts[0][:16], 4)  # warm-up
        start = time.perf_counter()
        results = await asyncio.gather(
            *(one_request(client, url, p, n) for p, n in zip(prompts, output_lens, strict=True))
        )
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    itls = sorted(x for r in results for x in r["itl"])
    return {
        "output_tokens": tokens,
        "wall_s": wall,
        "output_tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "itl_p50_s": statistics.median(itls) if itls else None,
    }


def run_hf(model, prompts, output_lens, batched: bool, pad_id: int):
    """Useful output tokens per second: a request's tokens beyond its own length
    (generated because a padded batch runs to its longest member) do not count."""
    import torch

    def gen(batch, lens):
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):  # left padding, as HF recommends for decoder-only
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        longest = max(lens)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest,
            min_new_tokens=longest,
            do_sample=False,
            pad_token_id=pad_id,
        )
        assert out.shape[1] - width == longest
        return sum(lens)

    with torch.inference_mode():
        gen(prompts[:1], [4])  # warm-up
        start = time.perf_counter()
        if batched:
            tokens = gen(prompts, output_lens)
        else:
            tokens = sum(gen([p], [n]) for p, n in zip(prompts, output_lens, strict=True))
        wall = time.perf_counter() - start
    return {"output_tokens": tokens, "wall_s": wall, "output_tokens_per_s": tokens / wall}


def matmul_floor(model, prompt_tokens: int, num_seqs: int, output_len: int, chunk: int = 512):
    """Seconds the model's weight matmuls alone need for this workload.

    A lower bound for any engine using these float32 weights: every prompt token
    goes through every decoder projection (in chunks of ``chunk`` rows), the LM
    head runs once per prompt and once per output token, and each decode step
    multiplies ``num_seqs`` rows by every weight. Attention, norms, sampling,
    scheduling and HTTP cost nothing here.
    """
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings().weight
    weights = [
        m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight is not head
    ]

    def timed(rows: int, mats, repeat: int = 3) -> float:
        xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in mats}
        for w in mats:  # warm-up
            F.linear(xs[w.shape[1]], w)
        start = time.perf_counter()
        for _ in range(repeat):
            for w in mats:
                F.linear(xs[w.shape[1]], w)
        return (time.perf_counter() - start) / repeat

    with torch.inference_mode():
        prefill = timed(chunk, weights) * prompt_tokens / chunk + timed(num_seqs, [head])
        step = timed(num_seqs, [*weights, head])
    total = prefill + output_len * step
    return {
        "prefill_s": prefill,
        "decode_step_s": step,
        "total_s": total,
        "output_tokens_per_s": num_seqs * output_len / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--mixed-lengths", action="store_true")
    ap.add_argument("--skip-hf-sequential", action="store_true")
    ap.add_argument("--name", default="pdcore_vs_hf_smollm2_cpu")
    ap.add_argument("--server-args", default="", help="extra launch_server flags")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from pdcore.model.embedded import embedded_model_path
    from pdcore.model.tokenizer import Tokenizer

    gguf = Path(embedded_model_path())
    tokenizer = Tokenizer.from_pretrained(str(gguf))
    rng = random.Random(1)
    n = args.num_requests
    if args.mixed_lengths:
        input_lens = [rng.randint(16, 2 * args.input_len) for _ in range(n)]
        output_lens = [rng.randint(16, 2 * args.output_len) for _ in range(n)]
    else:
        input_lens, output_lens = [args.input_len] * n, [args.output_len] * n
    prompts = make_prompts(tokenizer, input_lens)

    server = start_server(*args.server_args.split())
    try:
        server.wait_healthy(300)
        pd = asyncio.run(run_pdcore(server.url, prompts, output_lens))
    finally:
        server.stop(grace=60)

    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32, local_files_only=True
    ).eval()
    pad = tokenizer.eos_token_ids[0]
    hf_batched = run_hf(hf_model, prompts, output_lens, True, pad)
    hf_seq = None if args.skip_hf_sequential else run_hf(hf_model, prompts, output_lens, False, pad)
    floor = None
    if not args.mixed_lengths:
        floor = matmul_floor(hf_model, sum(input_lens), n, args.output_len)
    result = {
        "benchmark": args.name,
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        "workload": {
            "requests": n,
            "mixed_lengths": args.mixed_lengths,
            "input_tokens": sum(input_lens),
            "output_tokens": sum(output_lens),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "pdcore": pd,
        "hf_batched": hf_batched,
        "hf_sequential": hf_seq,
        "speedup_vs_hf_batched": pd["output_tokens_per_s"] / hf_batched["output_tokens_per_s"],
        # Upper bound on any engine's throughput here: weight matmuls only.
        "matmul_floor": floor,
    }
    if floor:
        result["matmul_floor_vs_hf_batched"] = (
            floor["output_tokens_per_s"] / hf_batched["output_tokens_per_s"]
        )
    if hf_seq:
        result["speedup_vs_hf_sequential"] = (
            pd["output_tokens_per_s"] / hf_seq["output_tokens_per_s"]
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
