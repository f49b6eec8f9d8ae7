"""Per-step host cost of handing a decode step's plan to a TP follower (CPU, gloo).

Two ranks on 127.0.0.1. The leader keeps ``--batch-sizes`` running requests of
``--prompt-len`` tokens and plays decode steps (one token per row, a new page
whenever a row fills one); each step it hands the follower the step's plan the
way the code under test does it:

* ``delta`` (this code): ``PlanSender.delta`` -> typed msgpack bytes ->
  ``PlanMirror.receive`` (sealed with HMAC when ``--secret`` is given);
* ``pickle`` (the code before it): ``broadcast_object(StepPlan)``, i.e.
  ``torch.distributed.broadcast_object_list``.

``--mode auto`` picks ``delta`` when the installed pdcore has it, else ``pickle``,
so the same script measures an older checkout (``PYTHONPATH`` at a copy of its
``core/`` as ``pdcore/``). Both ranks meet at a barrier before each step; the
follower's time is from the barrier to holding the plan (what delays its
forward), the leader's from the barrier to its send returning. Median and
10th/90th percentiles over ``--steps`` steps after ``--warmup``.

``--codec`` measures instead, in one process and without the network, only the
host work of both encodings for the same steps: pickle dumps+loads of the plan
(what the object collective does on each side) against delta building, msgpack
encode, HMAC seal and check (with ``--secret``), typed decode and the mirror's
rebuild. On a loaded machine this is the steadier number.

    python bench/bench_tp_broadcast.py --out bench/results/tp_broadcast.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

from pdcore.up.ports import pick_port


def _has_delta() -> bool:
    try:
        import pdcore.engine.step_delta  # noqa: F401
    except ImportError:
        return False
    return True


def _requests(n: int, prompt_len: int, page_size: int, first_page: int):
    from pdcore.sampling_params import SamplingParams
    from pdcore.scheduler.request import Req, ReqStatus

    reqs, page = [], first_page
    for i in range(n):
        req = Req(f"r{i}", [(7 * i + t) % 30000 for t in range(prompt_len)], SamplingParams())
        req.status = ReqStatus.RUNNING
        npages = -(-prompt_len // page_size)
        req.pages = list(range(page, page + npages))
        page += npages
        req.computed_len = prompt_len
        reqs.append(req)
    return reqs, page


def _decode_batch(reqs, page_size: int, next_page: int):
    from pdcore.scheduler.scheduler import ScheduledBatch

    for r in reqs:
        r.output_ids.append(5)
        r.computed_len = r.seq_len - 1
        if r.computed_len // page_size >= len(r.pages):
            r.pages.append(next_page)
            next_page += 1
    n = len(reqs)
    batch = ScheduledBatch(True, list(reqs), [r.computed_len for r in reqs], [1] * n, [True] * n)
    return batch, next_page


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _rank_main(rank, port, cfg, results) -> None:
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from pdcore.distributed.state import destroy_tp, init_tp, tp
    from pdcore.engine.step_plan import StepPlan

    mode = cfg["mode"]
    kwargs = {"secret": cfg["secret"]} if mode == "delta" else {}
    init_tp("gloo", f"tcp://127.0.0.1:{port}", rank, 2, **kwargs)
    group = tp().attn_cpu_group
    ps = cfg["page_size"]
    out = {}
    for bs in cfg["batch_sizes"]:
        if mode == "delta":
            from pdcore.engine.step_delta import PlanMirror, PlanSender

            sender, mirror = PlanSender(), PlanMirror(ps)
        else:
            from pdcore.distributed.state import broadcast_object
        reqs, next_page = _requests(bs, cfg["prompt_len"], ps, 1) if rank == 0 else ([], 0)
        times, sizes = [], []
        for step in range(cfg["warmup"] + cfg["steps"]):
            if rank == 0:
                batch, next_page = _decode_batch(reqs, ps, next_page)
                plan = StepPlan.from_batch(batch, ps)
            dist.barrier(group=group)
            t0 = time.perf_counter()
            if mode == "delta":
                if rank == 0:
                    delta = sender.delta(plan, batch.reqs)
                    sender.send(delta)
                else:
                    got = mirror.receive()
            else:
                got = broadcast_object(plan if rank == 0 else None)
            elapsed = time.perf_counter() - t0
            if step >= cfg["warmup"]:
                times.append(elapsed * 1e3)
                if rank == 0 and mode == "delta":
                    import msgspec

                    sizes.append(len(msgspec.msgpack.encode(delta)))
                elif rank == 0:
                    import pickle  # what broadcast_object_list sends: the bench only

                    sizes.append(len(pickle.dumps(plan)))
        if rank == 1:
            assert len(got.extend_lens) == bs, "the follower must hold the whole batch"
        out[bs] = {
            "median_ms": statistics.median(times),
            "p10_ms": _pct(times, 0.1),
            "p90_ms": _pct(times, 0.9),
            "payload_bytes": statistics.median(sizes) if sizes else None,
        }
    results.put((rank, out))
    destroy_tp()


def _codec(cfg) -> dict:
    """Host cost per step of each encoding, in one process (see the docstring)."""
    import pickle  # the encoding the object collectives used: measured, never received

    import msgspec

    from pdcore.distributed.wire import decode, seal, unseal
    from pdcore.engine.step_delta import WHAT, PlanMirror, PlanSender, StepDelta
    from pdcore.engine.step_plan import StepPlan

    key = hashlib.sha256(cfg["secret"].encode()).digest() if cfg["secret"] else None
    ps, out = cfg["page_size"], {}
    for bs in cfg["batch_sizes"]:
        reqs, next_page = _requests(bs, cfg["prompt_len"], ps, 1)
        sender, mirror = PlanSender(), PlanMirror(ps)
        old, new = [], []
        for step in range(cfg["warmup"] + cfg["steps"]):
            batch, next_page = _decode_batch(reqs, ps, next_page)
            plan = StepPlan.from_batch(batch, ps)
            t0 = time.perf_counter()
            pickle.loads(pickle.dumps(plan))
            t1 = time.perf_counter()
            data = seal(key, msgspec.msgpack.encode(sender.delta(plan, batch.reqs)))
            got = mirror.apply(decode(unseal(key, data, WHAT), StepDelta, WHAT))
            t2 = time.perf_counter()
            assert got.pages == plan.pages, "the mirror must rebuild the plan"
            if step >= cfg["warmup"]:
                old.append((t1 - t0) * 1e3)
                new.append((t2 - t1) * 1e3)
        out[bs] = {
            name: {"median_ms": statistics.median(xs), "p10_ms": _pct(xs, 0.1),
                   "p90_ms": _pct(xs, 0.9)}
            for name, xs in (("pickle", old), ("delta", new))
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", default="1,32,256")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--mode", choices=("auto", "delta", "pickle"), default="auto")
    ap.add_argument("--secret", default=None, help="seal the deltas (HMAC) with this secret")
    ap.add_argument("--label", default=None, help="name of this run in the output JSON")
    ap.add_argument("--out", default=None, help="append this run to this JSON file")
    ap.add_argument("--codec", action="store_true", help="in-process encode/decode cost only")
    a = ap.parse_args()
    mode = a.mode if a.mode != "auto" else ("delta" if _has_delta() else "pickle")
    if mode == "pickle" and a.secret:
        ap.error("--secret needs --mode delta (the pickle path has no sealing)")
    cfg = {
        "mode": mode,
        "secret": a.secret,
        "batch_sizes": [int(b) for b in a.batch_sizes.split(",")],
        "prompt_len": a.prompt_len,
        "page_size": a.page_size,
        "steps": a.steps,
        "warmup": a.warmup,
    }
    if a.codec:
        if not _has_delta():
            ap.error("--codec needs this checkout's pdcore (it compares both encodings)")
        parts = {"codec": _codec(cfg)}
        mode = "codec"
    else:
        parts = _two_ranks(cfg)
    run = {
        "label": a.label or (mode + (" +hmac" if a.secret else "")),
        "mode": mode,
        "sealed": bool(a.secret),
        **parts,
        "config": {k: v for k, v in cfg.items() if k != "secret"},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                 "machine": platform.machine(), "load_avg_1m": os.getloadavg()[0]},
    }  # fmt: skip
    print(json.dumps(run, indent=1))
    if a.out:
        runs = []
        if os.path.exists(a.out):
            with open(a.out) as f:
                runs = json.load(f)["runs"]
        with open(a.out, "w") as f:
            json.dump({"bench": "tp_broadcast", "runs": [*runs, run]}, f, indent=1)


def _two_ranks(cfg) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = pick_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, cfg, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join(60)
    return {"leader": got[0], "follower": got[1]}


if __name__ == "__main__":
    main()
