"""PD disaggregation on one CPU machine: KV transfer efficiency and TTFT, side by side.

For each transfer backend (``mooncake`` over TCP, ``nixl`` over UCX) one run measures:

1. **Transfer efficiency.** A real prefill and decode server pair
   (``python -m pdcore.launch_server --disaggregation-mode prefill|decode``) serves
   4k-token prompts one at a time. pdcore's rate is the delta of prefill's
   ``/get_server_info`` ``disaggregation.bytes_transferred`` over the delta of
   ``transfer_seconds`` (time inside ``engine.write`` + ``handle.wait`` of every
   chunk, summed; the chunk notice to decode is not in it), summed over those
   requests. Then the same backend's engine, used directly between two fresh
   processes (``pdcore.testing.transfer_peer``), moves the same bytes: with the
   same run structure (one write per prefill chunk holding every layer's K and V
   page-sized runs, contiguous page ids as a fresh pool hands out, so runs
   coalesce to one per buffer and chunk, plus the aux row with the last chunk) on
   idle cores and again while a prefill-like torch load keeps the cores busy (as
   pdcore's chunk writes overlap the next chunk's compute), with the same pages
   scattered (nothing coalesces: one run per page and buffer), and as one
   contiguous write. Ratios = pdcore / raw same-structure, idle and under load.
2. **TTFT, PD vs null.** The same prompts (distinct random words, exactly 1024
   and 4096 tokens) go to a ``null``-mode server and to the backend's PD pair,
   interleaved request by request; the server(s) not serving the current request
   are SIGSTOPped, so nothing idles on the other's cores and slow drifts of the
   shared machine hit both alike. PD: the body goes to prefill (non-streaming) and
   decode (streaming) at once, as the router sends it; TTFT is the time to
   decode's first streamed token. Overhead = median PD TTFT - median null TTFT
   (the paired differences are kept too); it is compared with the median
   per-request transfer time (prefill's ``transfer_seconds`` delta for that
   request, all chunks) plus 10% of the median null TTFT. ``effective_bytes_per_s``
   = bytes per request / overhead: all of PD's extra latency charged to the transfer.

Results: ``bench/results/pd_<backend>.json``, one file per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_hf import make_prompts

RESULTS = Path(__file__).parent / "results"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A ``launch_server`` process on 127.0.0.1; its stderr goes to a temp file."""

    def __init__(self, *args: str, timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = tempfile.TemporaryFile("w+")
        env = dict(os.environ, HF_HUB_OFFLINE="1")  # OMP_NUM_THREADS left as it is
        cmd = [sys.executable, "-m", "pdcore.launch_server", "--host", HOST]
        cmd += ["--port", str(self.port), "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self._tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy after {timeout}s: {self._tail()}")

    def _tree(self) -> list:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def pause(self) -> None:
        """SIGSTOP the server and its engine: a paused server takes no CPU."""
        for p in self._tree():
            p.suspend()

    def resume(self) -> None:
        for p in reversed(self._tree()):
            p.resume()

    def pd_stats(self) -> dict:
        return httpx.get(f"{self.url}/get_server_info", timeout=60).json()["disaggregation"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def gen_body(ids: list[int], max_new: int, **extra) -> dict:
    params = {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}
    return {"input_ids": ids, "sampling_params": params, **extra}


async def stream_ttft(client: httpx.AsyncClient, url: str, body: dict, start: float) -> dict:
    """POST a streaming /generate; seconds from ``start`` to the first token and to the end."""
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/generate", json={**body, "stream": True}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"{url}: stream error {chunk['error']}")
            n = chunk["meta_info"]["completion_tokens"]
            if n > tokens:
                if ttft is None:
                    ttft = time.perf_counter() - start
                tokens = n
    if ttft is None:
        raise RuntimeError(f"{url}: no token streamed")
    return {"ttft_s": ttft, "e2e_s": time.perf_counter() - start, "tokens": tokens}


async def null_request(client, server: Server, ids: list[int], max_new: int) -> dict:
    return await stream_ttft(client, server.url, gen_body(ids, max_new), time.perf_counter())


async def pd_request(client, prefill: Server, decode: Server, bport: int, ids, max_new) -> dict:
    """One PD request (prefill + decode at once); TTFT on decode and prefill's stats delta."""
    before = prefill.pd_stats()
    room = random.getrandbits(63) or 1
    body = gen_body(ids, max_new, bootstrap_host=HOST, bootstrap_port=bport, bootstrap_room=room)
    start = time.perf_counter()
    p_task = asyncio.create_task(client.post(f"{prefill.url}/generate", json=body))
    try:
        out = await stream_ttft(client, decode.url, body, start)
    finally:
        p = await p_task
    if p.status_code != 200:
        raise RuntimeError(f"prefill: HTTP {p.status_code}: {p.text[:500]}")
    deadline = time.monotonic() + 30  # the room's stats land before it is finalized
    while True:
        after = prefill.pd_stats()
        done = after["rooms_succeeded"] + after["rooms_failed"]
        if done > before["rooms_succeeded"] + before["rooms_failed"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("prefill never finished the room")
        await asyncio.sleep(0.05)
    if after["rooms_failed"] != before["rooms_failed"]:
        raise RuntimeError(f"PD room failed on prefill: {after}")
    out["bytes"] = after["bytes_transferred"] - before["bytes_transferred"]
    out["transfer_s"] = after["transfer_seconds"] - before["transfer_seconds"]
    return out


# ---- raw engine between two fresh processes ------------------------------------


def raw_transfer(backend: str, geom: dict, repeats: int) -> dict:
    """The backend's engine moving one 4k prompt's KV bytes, three ways, ``repeats`` times.

    ``same_structure`` and ``contiguous`` share one engine pair and alternate;
    ``scattered_pages`` runs last on its own pair, since an engine may fail it
    (its error is recorded instead of a rate).
    """
    nbuf, pages, pb = geom["num_buffers"], geom["pages"], geom["page_bytes"]
    chunk_pages, aux_bytes = geom["chunk_pages"], geom["aux_bytes"]
    perm = list(range(pages))
    random.Random(0).shuffle(perm)

    def chunked(base, rb, dst_page):
        per_buf, kv_bytes = pages * pb, nbuf * pages * pb
        writes = []
        for c0 in range(0, pages, chunk_pages):
            runs = [
                (base + b * per_buf + p * pb, rb + b * per_buf + dst_page(p) * pb, pb)
                for b in range(nbuf)
                for p in range(c0, min(c0 + chunk_pages, pages))
            ]
            writes.append(runs)
        if aux_bytes:
            writes[-1].append((base + kv_bytes, rb + kv_bytes, aux_bytes))
        return writes

    out = _raw_pair(
        backend,
        geom,
        repeats,
        {
            "same_structure": lambda base, big, rb, total: chunked(base, rb, lambda p: p),
            "same_structure_under_load": lambda base, big, rb, total: chunked(
                base, rb, lambda p: p
            ),
            "contiguous": lambda base, big, rb, total: [[(big, rb, total)]],
        },
    )
    try:
        out |= _raw_pair(
            backend,
            geom,
            repeats,
            {"scattered_pages": lambda base, big, rb, total: chunked(base, rb, perm.__getitem__)},
        )
    except Exception as e:  # recorded: an engine may not cope with that many runs
        out["scattered_pages"] = {"error": f"{type(e).__name__}: {e}", "bytes_per_s": None}
    return out


PREFILL_LIKE_LOAD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def _compute_load():
    """A process that keeps the cores busy as a prefill does (torch matmuls, as many
    threads as the servers use), started paused: SIGCONT it around a timed write."""
    import psutil
    import torch

    proc = subprocess.Popen(
        [sys.executable, "-c", PREFILL_LIKE_LOAD, str(torch.get_num_threads())],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(2)  # past import
    ps = psutil.Process(proc.pid)
    ps.suspend()
    return proc, ps


def _raw_pair(backend: str, geom: dict, repeats: int, variants: dict) -> dict:
    """A fresh local engine and peer process; time each variant's writes ``repeats`` times.

    Variants named ``*_under_load`` are timed while a prefill-like compute load runs
    (the cores shared as in pdcore, where a chunk's write overlaps the next chunk's
    compute); the others on idle cores.
    """
    from pdcore.disaggregation.transfer import MemoryRegion, coalesce_runs
    from pdcore.testing.transfer_peer import PeerProcess, build_engine

    nbuf, per_buf = geom["num_buffers"], geom["pages"] * geom["page_bytes"]
    kv_bytes = nbuf * per_buf
    aux_bytes = geom["aux_bytes"]
    total = kv_bytes + aux_bytes
    peer = PeerProcess(backend, {}, total, timeout=120)
    engine = build_engine(backend, None, {}, "prefill")
    try:
        paged = np.full(total, 0x5A, dtype=np.uint8)  # K/V buffers, then the aux row
        big = np.full(total, 0xA5, dtype=np.uint8)  # one region: the contiguous variant
        base, bigbase = paged.ctypes.data, big.ctypes.data
        # Registered as pdcore registers its pool: one region per K or V buffer.
        regions = [MemoryRegion(base + b * per_buf, per_buf) for b in range(nbuf)]
        if aux_bytes:
            regions.append(MemoryRegion(base + kv_bytes, aux_bytes))
        engine.register([*regions, MemoryRegion(bigbase, total)])
        peer_id = engine.connect(peer.metadata)
        peer.call("connect", engine.metadata())
        rb = peer.base
        writes = {name: make(base, bigbase, rb, total) for name, make in variants.items()}

        load, load_ps = _compute_load()

        def timed(ws, loaded: bool = False) -> tuple[float, int]:
            if loaded:
                load_ps.resume()
                time.sleep(0.2)
            try:
                return _timed(ws)
            finally:
                if loaded:
                    load_ps.suspend()

        def _timed(ws) -> tuple[float, int]:
            seconds, nbytes = 0.0, 0
            for runs in ws:  # as pdcore's worker: one write per chunk, waited in turn
                start = time.monotonic()
                h = engine.write(peer_id, runs)
                try:
                    h.wait(120)
                finally:
                    h.release()
                seconds += time.monotonic() - start
                nbytes += h.nbytes
            return seconds, nbytes

        out = {}
        remote = [MemoryRegion(rb, total)]
        for name, ws in writes.items():
            timed(ws)  # warm-up: opens sessions / endpoints
            out[name] = {
                "writes": len(ws),
                "runs_given": sum(len(w) for w in ws),
                "runs_submitted": sum(len(coalesce_runs(w, engine.regions, remote)) for w in ws),
                "seconds": [],
            }
        for _ in range(repeats):  # round-robin so background load hits all alike
            for name, ws in writes.items():
                s, n = timed(ws, loaded=name.endswith("_under_load"))
                out[name]["seconds"].append(s)
                out[name]["bytes"] = n
        probe = peer.read(kv_bytes // 2, 64)  # sanity: the last write's bytes landed
        if probe not in (b"\x5a" * 64, b"\xa5" * 64):
            raise RuntimeError(f"raw {backend}: bytes did not land ({probe[:8]!r})")
        for v in out.values():
            v["bytes_per_s"] = v["bytes"] * len(v["seconds"]) / sum(v["seconds"])
            v["median_s"] = statistics.median(v["seconds"])
        return out
    finally:
        if "load" in locals():
            load.kill()
            load.wait()
        peer.close()
        engine.close()


# ---- one backend ------------------------------------------------------------------


async def ttft_phase(args, backend, prompts, warm) -> dict:
    """Each prompt on a null server and then on a PD pair of ``backend``, interleaved.

    All three servers are up for the whole phase, but only the one(s) serving the
    current request run: the others are SIGSTOPped, so neither idles on the other's
    cores, and slow drifts of the shared machine hit null and PD alike.
    """
    bport = free_port()
    common = list(args.server_common)
    pd = ["--disaggregation-transfer-backend", backend]
    null = prefill = decode = None
    try:
        null = Server(*common)
        null.pause()
        prefill = Server(
            "--disaggregation-mode",
            "prefill",
            "--disaggregation-bootstrap-port",
            str(bport),
            *pd,
            *common,
        )
        decode = Server("--disaggregation-mode", "decode", *pd, *common)
        pair = (prefill, decode)
        out: dict = {"pd": {}, "null": {}}

        async def on_null(ids):
            for s in pair:
                s.pause()
            null.resume()
            try:
                return await null_request(client, null, ids, args.max_new_tokens)
            finally:
                null.pause()
                for s in pair:
                    s.resume()

        async with httpx.AsyncClient(timeout=600) as client:
            for ids in warm:  # first requests pay lazy setup (sessions, allocations)
                await on_null(ids)
                await pd_request(client, prefill, decode, bport, ids, args.max_new_tokens)
            for length, ps in prompts.items():
                out["pd"][length], out["null"][length] = [], []
                for ids in ps:
                    n = await on_null(ids)
                    r = await pd_request(client, prefill, decode, bport, ids, args.max_new_tokens)
                    out["null"][length].append(n)
                    out["pd"][length].append(r)
                    print(
                        f"  {backend} {length:5d} tok: null ttft {n['ttft_s']:.3f}s  PD ttft "
                        f"{r['ttft_s']:.3f}s  transfer {r['transfer_s']:.3f}s "
                        f"({r['bytes'] / 2**20:.1f} MiB)",
                        flush=True,
                    )
        out["prefill_stats_end"] = prefill.pd_stats()
        return out
    finally:
        if null is not None:
            null.resume()
        for s in (decode, prefill, null):
            if s is not None:
                s.stop()


def summarize(backend, runs, raw, geom, args) -> dict:
    ttft = {}
    for length in runs["pd"]:
        nulls, pds = runs["null"][length], runs["pd"][length]
        null_t = statistics.median(r["ttft_s"] for r in nulls)
        pd_t = statistics.median(r["ttft_s"] for r in pds)
        xfer = statistics.median(r["transfer_s"] for r in pds)
        overhead = pd_t - null_t
        budget = xfer + 0.10 * null_t
        paired = [p["ttft_s"] - n["ttft_s"] for n, p in zip(nulls, pds, strict=True)]
        ttft[str(length)] = {
            "paired_overhead_s": paired,
            "null_ttft_s": null_t,
            "pd_ttft_s": pd_t,
            "overhead_s": overhead,
            "transfer_s": xfer,
            "bytes_per_request": statistics.median(r["bytes"] for r in pds),
            "budget_s": budget,
            "goal_met": overhead <= budget,
            # All of PD's extra latency charged to the transfer: bytes / overhead.
            "effective_bytes_per_s": (
                statistics.median(r["bytes"] for r in pds) / overhead if overhead > 0 else None
            ),
            "null_runs": nulls,
            "pd_runs": pds,
        }
    long = str(max(runs["pd"]))
    pds = runs["pd"][int(long)]
    pd_bytes = sum(r["bytes"] for r in pds)
    pd_secs = sum(r["transfer_s"] for r in pds)
    pd_rate = pd_bytes / pd_secs
    raw_same = raw["same_structure"]["bytes_per_s"]
    raw_loaded = raw["same_structure_under_load"]["bytes_per_s"]
    return {
        "benchmark": f"pd_{backend}",
        "backend": backend,
        "transport": "TCP (no --disaggregation-ib-device)" if backend == "mooncake" else "UCX",
        "model": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF, float32 KV)",
        "server_args": args.server_common,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "kv_geometry": geom,
        "transfer": {
            "prompt_tokens": int(long),
            "pdcore_bytes": pd_bytes,
            "pdcore_transfer_s": pd_secs,
            "pdcore_bytes_per_s": pd_rate,
            "pdcore_per_request_bytes_per_s": [r["bytes"] / r["transfer_s"] for r in pds],
            "raw": raw,
            "raw_same_structure_bytes_per_s": raw_same,
            "ratio_vs_raw_same_structure": pd_rate / raw_same,
            "raw_same_structure_under_load_bytes_per_s": raw_loaded,
            "ratio_vs_raw_same_structure_under_load": pd_rate / raw_loaded,
            "ratio_vs_raw_contiguous": pd_rate / raw["contiguous"]["bytes_per_s"],
            "goal_ratio": 0.8,
            "goal_met_idle_raw": pd_rate / raw_same >= 0.8,
            "goal_met_loaded_raw": pd_rate / raw_loaded >= 0.8,
        },
        "ttft": ttft,
        "ttft_criterion": (
            "median(PD TTFT) - median(null TTFT) <= median(prefill transfer_seconds delta "
            "per PD request, all chunks) + 0.10 * median(null TTFT)"
        ),
        "prefill_stats_end": runs["prefill_stats_end"],
    }


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "UCX_TLS": os.environ.get("UCX_TLS"),
        "MC_FORCE_TCP": os.environ.get("MC_FORCE_TCP"),
        "loadavg_at_start": os.getloadavg(),
    }


def _rate(v: dict) -> str:
    return f"{v['bytes_per_s'] / 2**20:.0f} MiB/s" if v.get("bytes_per_s") else "FAILED"


def print_summary(res: dict) -> None:
    t = res["transfer"]
    mib = 2**20
    print(f"\n== {res['backend']} ({res['transport']}) ==")
    print(
        f"transfer, {t['prompt_tokens']}-token prompts: pdcore {t['pdcore_bytes_per_s'] / mib:.0f}"
        f" MiB/s; raw same-structure {t['raw_same_structure_bytes_per_s'] / mib:.0f} MiB/s, "
        f"scattered {_rate(t['raw']['scattered_pages'])}, contiguous "
        f"{t['raw']['contiguous']['bytes_per_s'] / mib:.0f} MiB/s; ratio "
        f"{t['ratio_vs_raw_same_structure']:.0%}; raw same-structure under a prefill-like "
        f"load {t['raw_same_structure_under_load_bytes_per_s'] / mib:.0f} MiB/s, ratio "
        f"{t['ratio_vs_raw_same_structure_under_load']:.0%} (goal >= 80%)"
    )
    for length, x in res["ttft"].items():
        print(
            f"TTFT {length:>5} tok: null {x['null_ttft_s']:.3f}s  PD {x['pd_ttft_s']:.3f}s  "
            f"overhead {x['overhead_s'] * 1e3:+.0f} ms  transfer {x['transfer_s'] * 1e3:.0f} ms  "
            f"budget {x['budget_s'] * 1e3:.0f} ms  -> {'met' if x['goal_met'] else 'NOT met'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["mooncake", "nixl"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3, help="PD/null requests per length")
    ap.add_argument("--raw-repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--max-total-tokens", type=int, default=16384)
    ap.add_argument("--chunked-prefill-size", type=int, default=2048)
    ap.add_argument("--page-size", type=int, default=16)
    args = ap.parse_args()
    args.server_common = [
        "--max-total-tokens",
        str(args.max_total_tokens),
        "--chunked-prefill-size",
        str(args.chunked_prefill_size),
        "--page-size",
        str(args.page_size),
    ]

    from pdcore.model.embedded import embedded_model_path
    from pdcore.model.loader import load_model_config
    from pdcore.model.tokenizer import Tokenizer

    cfg = load_model_config(None)
    tokenizer = Tokenizer.from_pretrained(embedded_model_path())
    lengths = sorted(args.lengths)
    # Same prompts for every server; distinct from each other (no prefix-cache hits).
    flat = make_prompts(tokenizer, [n for n in lengths for _ in range(args.repeats)], seed=4)
    prompts = {n: flat[i * args.repeats : (i + 1) * args.repeats] for i, n in enumerate(lengths)}
    warm = make_prompts(tokenizer, [64, 1024], seed=5)
    page_bytes = args.page_size * cfg.num_key_value_heads * cfg.head_dim * 4  # float32
    longest = lengths[-1]
    geom = {
        "num_buffers": 2 * cfg.num_hidden_layers,
        "page_size": args.page_size,
        "page_bytes": page_bytes,
        "pages": -(-longest // args.page_size),
        "chunk_pages": max(1, args.chunked_prefill_size // args.page_size),
        "aux_bytes": 0,  # set from prefill's measured bytes
    }
    info = machine()
    print(f"machine: {info}", flush=True)

    RESULTS.mkdir(exist_ok=True)
    for backend in args.backends:
        t0 = time.perf_counter()
        print(f"[{backend}] null server and prefill + decode pair, interleaved", flush=True)
        runs = asyncio.run(ttft_phase(args, backend, prompts, warm))
        per_req = int(statistics.median(r["bytes"] for r in runs["pd"][longest]))
        kv = geom["num_buffers"] * geom["pages"] * page_bytes
        g = dict(geom, aux_bytes=per_req - kv if 0 <= per_req - kv < 1 << 20 else 0)
        if per_req - kv != g["aux_bytes"]:
            print(f"  note: prefill moved {per_req} bytes/request, expected {kv} + aux")
        print(f"[{backend}] raw engine, {kv + g['aux_bytes']} bytes x {args.raw_repeats}")
        raw = raw_transfer(backend, g, args.raw_repeats)
        res = summarize(backend, runs, raw, g, args)
        res["machine"] = info
        res["wall_s"] = time.perf_counter() - t0
        (RESULTS / f"pd_{backend}.json").write_text(json.dumps(res, indent=2) + "\n")
        print_summary(res)


if __name__ == "__main__":
    main()
