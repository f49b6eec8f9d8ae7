"""PD on two GPUs of one host, and the raw GPU0 -> GPU1 KV copy rate.

1. Correctness: a null-mode server on GPU 0 answers 8 greedy requests; then a
   prefill server on GPU 0 and a decode server with ``--base-gpu-id 1`` answer
   the same requests through the transfer backend (VRAM to VRAM); outputs must
   be equal token for token, and both KV pools idle afterwards.
2. Rate: the KV of a 16k-token prompt of the Llama-3.1-8B architecture
   (32 layers x K/V x 16384 tokens x 8 heads x 128 x bf16 = 2 GiB), laid out in
   16-token pages as pdcore's pool holds it, written GPU0 -> GPU1 by the
   backend's engine, vs ``torch`` peer copy of the same bytes.

``python bench/gpu/pd_two_gpus.py --model-path DIR --backend nixl``; results
go to ``bench/gpu/results/pd_two_gpus_<backend>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from pdcore.up.launch import start_server
from pdcore.up.plan import plan_servers
from pdcore.up.ports import pick_port

HERE = Path(__file__).parent


free_port = pick_port  # every port comes from the launcher's reservations


class Server:
    """A ``launch_server`` process started by ``pdcore.up.launch`` (``role``/``gpu`` add
    ``--disaggregation-mode``, a prefill's bootstrap port, ``--base-gpu-id``)."""

    def __init__(self, *args: str, role: str | None = None, gpu: int | None = None):
        self.launched = start_server(*args, role=role, gpu=gpu)
        self.port, self.url = self.launched.port, self.launched.url
        self.bootstrap_port = self.launched.bootstrap_port
        try:
            self.launched.wait_healthy(300)
        except BaseException:
            self.stop()
            raise

    def info(self) -> dict:
        return httpx.get(f"{self.url}/get_server_info", timeout=30).json()

    def stop(self) -> None:
        self.launched.stop(grace=60)


def body(ids, **extra):
    sampling = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    return {"input_ids": ids, "sampling_params": sampling, "return_logprob": True, **extra}


async def post_all(urls_bodies):
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(url, b):
            r = await client.post(f"{url}/generate", json=b)
            return r.status_code, r.json()

        return await asyncio.gather(*(one(u, b) for u, b in urls_bodies))


def correctness(model: str, backend: str, dummy: bool = False) -> dict:
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 2000) for _ in range(n)] for n in (5, 40, 300, 700, 9, 64, 65, 1)]
    common = ["--model-path", model, "--device", "cuda", "--page-size", "16"]
    if dummy:  # the same seeded random weights in every server
        common += ["--load-format", "dummy", "--dtype", "bfloat16"]
    common += ["--chunked-prefill-size", "256", "--max-total-tokens", "16384"]
    null = Server(*common, "--base-gpu-id", "0")
    try:
        ref = asyncio.run(post_all([(null.url, body(p)) for p in prompts]))
    finally:
        null.stop()
    pd = ["--disaggregation-transfer-backend", backend]
    gpus = {s.role: s.base_gpu_id for s in plan_servers(1, 1, gpus=True)}  # as pdcore up does
    prefill = Server(*common, *pd, role="prefill", gpu=gpus["prefill"])
    decode = Server(*common, *pd, role="decode", gpu=gpus["decode"])
    boot = prefill.bootstrap_port
    try:
        rooms = [random.getrandbits(63) or 1 for _ in prompts]
        extra = [
            dict(bootstrap_host="127.0.0.1", bootstrap_port=boot, bootstrap_room=r) for r in rooms
        ]
        pairs = []
        for p, e in zip(prompts, extra, strict=True):
            pairs += [(prefill.url, body(p, **e)), (decode.url, body(p, **e))]
        out = asyncio.run(post_all(pairs))
        decoded = out[1::2]
        equal = [
            d[1].get("output_ids") == r[1]["output_ids"] for d, r in zip(decoded, ref, strict=True)
        ]
        time.sleep(1)
        p_info, d_info = prefill.info(), decode.info()
        return {
            "statuses": [s for s, _ in out],
            "outputs_equal_null_mode": equal,
            "all_equal": all(equal),
            "prefill_device": p_info["engine_info"]["device"],
            "decode_device": d_info["engine_info"]["device"],
            "prefill_disaggregation": p_info["disaggregation"],
            "decode_disaggregation": d_info["disaggregation"],
            "used_pages_after": [
                p_info["kv_cache"]["used_pages"],
                d_info["kv_cache"]["used_pages"],
            ],
        }
    finally:
        decode.stop()
        prefill.stop()


def rate(backend: str) -> dict:
    import torch

    from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig
    from pdcore.platform import MemoryKind
    from pdcore.registry import get_registry

    layers, tokens, heads, dim, page = 32, 16384, 8, 128, 16
    page_bytes = page * heads * dim * 2
    pages = tokens // page
    total = layers * 2 * pages * page_bytes
    src = torch.randint(
        0, 255, (layers * 2, pages * page_bytes), dtype=torch.uint8, device="cuda:0"
    )
    dst = torch.zeros_like(src, device="cuda:1")
    factory = get_registry().get("transfer", backend).factory
    engines = []
    for role, t, dev in (("prefill", src, 0), ("decode", dst, 1)):
        e = factory(TransferConfig(role=role, memory_kind=MemoryKind.VRAM, device_id=dev))
        e.register([MemoryRegion(t.data_ptr(), t.numel(), MemoryKind.VRAM, dev)])
        engines.append(e)
    peer = engines[0].connect(engines[1].metadata())
    rows = src.stride(0)
    # pdcore's runs: per layer and K/V buffer, one run per page (here pages are in order,
    # so the engine's coalescing merges them per buffer, as for a fresh pool).
    runs = [(src.data_ptr() + b * rows + i * page_bytes, dst.data_ptr() + b * rows + i * page_bytes,
             page_bytes) for b in range(layers * 2) for i in range(pages)]  # fmt: skip
    # and scattered: every other page swapped, so runs cannot merge across pages
    order = list(range(pages))
    for i in range(0, pages - 1, 2):
        order[i], order[i + 1] = order[i + 1], order[i]
    scattered = [(src.data_ptr() + b * rows + i * page_bytes,
                  dst.data_ptr() + b * rows + j * page_bytes, page_bytes)
                 for b in range(layers * 2) for i, j in enumerate(order)]  # fmt: skip

    def engine_copy(rs):
        h = engines[0].write(peer, rs)
        h.wait(120)
        h.release()

    def timed(fn, n=5):
        fn()
        out = []
        for _ in range(n):
            torch.cuda.synchronize(0)
            torch.cuda.synchronize(1)
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize(0)
            torch.cuda.synchronize(1)
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    t_runs = timed(lambda: engine_copy(runs))
    ok = torch.equal(src.to("cuda:1"), dst)
    t_scattered = timed(lambda: engine_copy(scattered))
    t_torch = timed(lambda: dst.copy_(src))
    for e in engines:
        e.close()
    return {
        "bytes": total,
        "bytes_verified": ok,
        "engine_GBps_pages_in_order": total / t_runs / 1e9,
        "engine_GBps_pages_scattered": total / t_scattered / 1e9,
        "torch_peer_copy_GBps": total / t_torch / 1e9,
        "ratio_in_order": t_torch / t_runs,
        "ratio_scattered": t_torch / t_scattered,
    }


def _receiver(conn, backend: str, nbytes: int, nregions: int, options: dict) -> None:
    """Child process: GPU 1 buffer in ``nregions`` registrations; answers with
    metadata, then a checksum."""
    import torch

    from pdcore.disaggregation.transfer import TransferConfig
    from pdcore.platform import MemoryKind
    from pdcore.registry import get_registry

    dst = torch.zeros(nbytes, dtype=torch.uint8, device="cuda:1")
    factory = get_registry().get("transfer", backend).factory
    engine = factory(
        TransferConfig(role="decode", memory_kind=MemoryKind.VRAM, device_id=1, options=options)
    )
    engine.register(_split(dst.data_ptr(), nbytes, nregions, 1))
    conn.send(engine.metadata())
    conn.recv()  # "done"
    torch.cuda.synchronize(1)
    conn.send(int(dst[:: 1 << 20].to(torch.int64).sum()))
    engine.close()


def _split(addr: int, nbytes: int, n: int, device: int) -> list:
    from pdcore.disaggregation.transfer import MemoryRegion
    from pdcore.platform import MemoryKind

    size = nbytes // n
    return [MemoryRegion(addr + i * size, size, MemoryKind.VRAM, device) for i in range(n)]


def rate_two_processes(backend: str, nregions: int = 1, options: dict | None = None) -> dict:
    """The same copy between two processes (as prefill and decode servers are).

    Both buffers are registered as ``nregions`` equal regions, and runs never
    merge across a region boundary: 1 region = one 2 GiB run; 64 = pdcore's pool
    for this model (one region per layer's K or V buffer, 32 MiB runs). The runs
    are what pdcore's KV manager hands the engine for this prompt in a fresh pool
    (one per buffer, not one per page: 65,536 page runs would make Python's
    merging of them dominate the time). Timed by spinning on the
    handle's status (no back-off sleeps in the measurement).
    """
    import multiprocessing as mp

    import torch

    from pdcore.disaggregation.transfer import TransferConfig, TransferStatus
    from pdcore.platform import MemoryKind
    from pdcore.registry import get_registry

    layers, tokens, heads, dim, page = 32, 16384, 8, 128, 16
    page_bytes = page * heads * dim * 2
    pages = tokens // page
    total = layers * 2 * pages * page_bytes
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    options = dict(options or {})
    proc = ctx.Process(target=_receiver, args=(child, backend, total, nregions, options))
    proc.start()
    src = torch.randint(0, 255, (total,), dtype=torch.uint8, device="cuda:0")
    factory = get_registry().get("transfer", backend).factory
    engine = factory(
        TransferConfig(role="prefill", memory_kind=MemoryKind.VRAM, device_id=0, options=options)
    )
    engine.register(_split(src.data_ptr(), total, nregions, 0))
    meta = parent.recv()
    peer = engine.connect(meta)
    remote = min(r["addr"] for r in meta["regions"])
    # Runs as pdcore's KV manager builds them (``KVManager._direct_writes``): page ids
    # grouped into spans consecutive on both sides, then one run per K/V buffer and
    # span (a fresh pool: one span, so one run per buffer).
    from pdcore.disaggregation.kv_manager import page_spans

    ids = list(range(pages))
    per_buffer = pages * page_bytes
    runs = [(src.data_ptr() + b * per_buffer + s * page_bytes,
             remote + b * per_buffer + d * page_bytes, n * page_bytes)
            for b in range(layers * 2) for s, d, n in page_spans(ids, ids)]  # fmt: skip

    def copy():
        h = engine.write(peer, runs)
        try:
            while (st := h.status()) is TransferStatus.PENDING:
                pass
            if st is not TransferStatus.DONE:
                h.wait(1)  # raises with the engine's reason
        finally:
            h.release()

    copy()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        copy()
        times.append(time.perf_counter() - t)
    parent.send("done")
    checksum = parent.recv()
    proc.join(60)
    engine.close()
    want = int(src[:: 1 << 20].to(torch.int64).sum())
    return {
        "bytes": total,
        "regions_per_side": nregions,
        "engine_options": options,
        "bytes_verified": checksum == want,
        "seconds": times,
        "engine_GBps_two_processes": total / statistics.median(times) / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-path", default=None)
    ap.add_argument(
        "--dummy-config",
        default=None,
        help="instead of --model-path: an HF config.json served with random bf16 weights "
        "(e.g. llama-3.1-8b-instruct.config.json next to this file)",
    )
    ap.add_argument("--backend", default="nixl")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rate-only", action="store_true")
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 8, 64, 512])
    ap.add_argument(
        "--engine-options", default="[{}]", help="JSON list of engine option dicts to sweep"
    )
    ap.add_argument("--skip-one-process", action="store_true")
    args = ap.parse_args()
    if not args.rate_only and not (args.model_path or args.dummy_config):
        ap.error("--model-path or --dummy-config is required (unless --rate-only)")
    import torch

    result = {
        "cards": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "backend": args.backend,
        "rate_16k_tokens_llama8b_kv_two_processes": [
            rate_two_processes(args.backend, n, opts)
            for opts in json.loads(args.engine_options)
            for n in args.regions
        ],
    }
    print(json.dumps(result, indent=2), flush=True)
    if not args.skip_one_process:
        result["rate_16k_tokens_llama8b_kv_one_process"] = rate(args.backend)
    print(json.dumps(result, indent=2), flush=True)
    if not args.rate_only:
        model = args.model_path
        if args.dummy_config:
            from pd_vs_colocated import make_model_dir

            model = str(make_model_dir(args.dummy_config, Path(tempfile.mkdtemp()) / "model"))
        result["pd_correctness"] = correctness(model, args.backend, bool(args.dummy_config))
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out) if args.out else HERE / "results" / f"pd_two_gpus_{args.backend}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
