"""Probes behind the NIXL finding of BENCHMARKS.md's round 8: what makes one
transfer-engine write of a 2048-token chunk of SmolLM2's KV (60 buffers x 128 pages x
12 KiB = 94 MB) slow on this machine.

* ``age``: the same writes into memory of different ages: zeroed seconds before,
  rewritten, then after ``--idle`` seconds of nobody touching it (and into another
  region zeroed as long ago), the second time each.
* ``decode-traits``: a peer with what a decode server has and a bare peer lacks (a
  notification on every write, a thread polling notifications at 1-8 ms, memory in 60
  registered regions), one trait at a time.
* ``same-process``: the write from a thread while the model's chunked prefill runs in
  this process (as on prefill) and while it runs in another process.

``python bench/write_probes.py age decode-traits same-process [--backend nixl]``
writes ``bench/results/write_probes_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

NB, PAGES, PB = 60, 128, 12288  # one 2048-token chunk: K and V of 30 layers, 16-token pages
PER_BUF = PAGES * PB
CHUNK = NB * PER_BUF
RESULTS = Path(__file__).parent / "results"


def _peer(conn, backend: str, nbytes: int, nregions: int, poll: bool) -> None:
    """A decode-like peer: memory allocated as the KV pool is, optionally a notice poller."""
    from pdcore.disaggregation.transfer import MemoryRegion
    from pdcore.kvcache import host_memory
    from pdcore.testing.transfer_peer import build_engine

    engine = build_engine(backend, None, {}, "decode")
    mem = host_memory.zeros((nbytes,), torch.uint8)
    step = nbytes // nregions
    engine.register([MemoryRegion(mem.data_ptr() + i * step, step) for i in range(nregions)])
    seen, stop = [], threading.Event()

    def poll_notices():  # as KVManager's notice poller: 1 ms after a notice, backing off to 8
        delay = 0.001
        while not stop.is_set():
            got = engine.notifications()
            seen.extend(got)
            delay = 0.001 if got else min(delay * 2, 0.008)
            time.sleep(delay)

    if poll:
        threading.Thread(target=poll_notices, daemon=True).start()
    conn.send((engine.metadata(), mem.data_ptr()))
    while True:
        cmd, arg = conn.recv()
        if cmd == "connect":
            conn.send(engine.connect(arg))
        else:
            stop.set()
            conn.send(len(seen))
            return


class Writer:
    """This process's engine and a 94 MB source, writing whole chunks to one peer."""

    def __init__(self, backend: str, peer_bytes: int, nregions: int = 1, poll: bool = False):
        from pdcore.disaggregation.transfer import MemoryRegion
        from pdcore.kvcache import host_memory
        from pdcore.testing.transfer_peer import build_engine

        self.engine = build_engine(backend, None, {}, "prefill")
        self.src = host_memory.zeros((CHUNK,), torch.uint8)
        base = self.src.data_ptr()
        self.engine.register([MemoryRegion(base + b * PER_BUF, PER_BUF) for b in range(NB)])
        self.conn, child = mp.Pipe()
        args = (child, backend, peer_bytes, nregions, poll)
        self.proc = mp.get_context("spawn").Process(target=_peer, args=args, daemon=True)
        self.proc.start()
        metadata, self.remote = self.conn.recv()
        self.peer = self.engine.connect(metadata)
        self.conn.send(("connect", self.engine.metadata()))
        self.conn.recv()

    def write_ms(self, offset: int = 0, notify: bytes | None = None) -> float:
        """One chunk into the peer's memory at ``offset``, from a just-rewritten source."""
        self.src.fill_(int(time.monotonic() * 1e3) % 251)
        s, r = self.src.data_ptr(), self.remote + offset
        runs = [(s + b * PER_BUF, r + b * PER_BUF, PER_BUF) for b in range(NB)]
        start = time.monotonic()
        h = self.engine.write(self.peer, runs, notify)
        try:
            h.wait(60)
        finally:
            h.release()
        return round((time.monotonic() - start) * 1e3, 1)

    def close(self) -> int:
        self.conn.send(("stop", None))
        seen = self.conn.recv()
        self.proc.join(10)
        self.engine.close()
        return seen


def probe_age(backend: str, idle: float) -> dict:
    w = Writer(backend, 4 * CHUNK)
    try:
        out = {"zeroed_seconds_before": [w.write_ms(0), w.write_ms(CHUNK)]}
        out["rewritten"] = [w.write_ms(0), w.write_ms(CHUNK)]
        time.sleep(idle)
        out[f"after_{idle:.0f}s_idle"] = w.write_ms(0)
        out[f"after_{idle:.0f}s_idle_again"] = w.write_ms(0)
        out[f"zeroed_{idle:.0f}s_before_never_written"] = w.write_ms(2 * CHUNK)
        out[f"zeroed_{idle:.0f}s_before_again"] = w.write_ms(2 * CHUNK)
        return out
    finally:
        w.close()


def probe_decode_traits(backend: str) -> dict:
    out = {}
    for regions, poll, notify in [(1, False, False), (1, False, True), (1, True, True),
                                  (60, False, False), (60, True, True)]:  # fmt: skip
        w = Writer(backend, CHUNK, regions, poll)
        try:
            w.write_ms()  # first use of the peer
            times = [w.write_ms(0, b"n%d" % i if notify else None) for i in range(6)]
        finally:
            seen = w.close()
        out[f"regions={regions} poller={poll} notify={notify}"] = {"ms": times, "notices": seen}
    return out


FORWARD = """
import torch
from pdcore.model.embedded import embedded_model_path
from pdcore.model.loader import load_model
from pdcore.model.reference_runner import prompt_logits
model = load_model(embedded_model_path(), torch.float32, "cpu", load_tokenizer=False).model
print("ready", flush=True)
with torch.inference_mode():
    while True:
        prompt_logits(model, list(range(100, 2148)), page_size=16, prefill_chunk=2048)
"""


def probe_same_process(backend: str) -> dict:
    from pdcore.model.embedded import embedded_model_path
    from pdcore.model.loader import load_model
    from pdcore.model.reference_runner import prompt_logits

    w = Writer(backend, CHUNK)
    try:
        for _ in range(3):
            w.write_ms()
        out = {"idle": [w.write_ms() for _ in range(5)]}
        model = load_model(embedded_model_path(), torch.float32, "cpu", load_tokenizer=False)
        stop, got = threading.Event(), []

        def writer():  # as prefill's transfer worker next to the forward
            time.sleep(1.0)
            for _ in range(5):
                got.append(w.write_ms())
                time.sleep(0.3)
            stop.set()

        t = threading.Thread(target=writer)
        t.start()
        with torch.inference_mode():
            while not stop.is_set():
                prompt_logits(model.model, list(range(100, 2148)), 16, prefill_chunk=2048)
        t.join()
        out["forward_in_this_process"] = got
        load = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(FORWARD)], stdout=subprocess.PIPE, text=True
        )
        try:
            load.stdout.readline()
            time.sleep(1.0)
            out["forward_in_another_process"] = []
            for _ in range(5):
                out["forward_in_another_process"].append(w.write_ms())
                time.sleep(0.3)
        finally:
            load.kill()
            load.wait()
        out["idle_after"] = [w.write_ms() for _ in range(5)]
        return out
    finally:
        w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("probes", nargs="+", choices=["age", "decode-traits", "same-process"])
    ap.add_argument("--backend", default="nixl")
    ap.add_argument("--idle", type=float, default=90.0, help="seconds untouched (age probe)")
    args = ap.parse_args()
    result = {"backend": args.backend, "chunk_bytes": CHUNK}
    for name in args.probes:
        if name == "age":
            result[name] = probe_age(args.backend, args.idle)
        elif name == "decode-traits":
            result[name] = probe_decode_traits(args.backend)
        else:
            result[name] = probe_same_process(args.backend)
        print(name, json.dumps(result[name]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"write_probes_{args.backend}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
