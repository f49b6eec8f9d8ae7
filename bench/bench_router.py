"""Router overhead against stub workers: added latency and max requests/s, same run.

Three paths to the same kind of stub worker are measured side by side:

- ``direct``: client -> stub (the baseline),
- ``regular``: client -> router (``--worker-urls STUB``) -> stub,
- ``pd``: client -> router (``--pd-disaggregation --prefill P --decode D``) -> both
  stubs at once (prefill's answer is read in full, decode's is returned).

Stubs are tiny asyncio HTTP/1.1 servers in their own processes answering a fixed
small JSON to ``POST /generate`` at once, plus ``/health`` and ``/get_server_info``
(with ``disaggregation_bootstrap_port``). The router is the real
``python -m pdcore.launch_router`` process. The client is a minimal keep-alive
HTTP/1.1 client on raw sockets, so its own cost is small and the same on every path.

1. **Latency**: ``--n`` sequential non-streaming ``/generate`` requests per path on one
   keep-alive connection, in ``--rounds`` interleaved rounds (direct, regular, pd,
   direct, ...) so background load on a shared machine hits all paths alike.
   Added p50 = path p50 - direct p50 (likewise p99).
2. **Throughput**: ``--concurrency`` connections each sending back to back for
   ``--duration`` seconds per path (interleaved rounds too); requests/s completed.

Writes ``bench/results/router_overhead.json``; goal: added p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

from pdcore.up import launch
from pdcore.up.launch import Proc

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"text": "Hello", "sampling_params": {"max_new_tokens": 8}}).encode()
ANSWER = json.dumps(
    {
        "text": " world, this is a stub",
        "output_ids": [1, 2, 3, 4, 5, 6, 7, 8],
        "meta_info": {
            "id": "stub",
            "finish_reason": {"type": "length", "length": 8},
            "prompt_tokens": 1,
            "completion_tokens": 8,
        },
    }
).encode()
GOAL_ADDED_P50_MS = 2.0


# ---- stub worker (runs as ``bench_router.py --stub PORT BOOTSTRAP_PORT``) ----------


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (
        status,
        reason,
        ctype,
        len(body),
    )
    return head + body


class _StubProtocol(asyncio.Protocol):
    def __init__(self, info: bytes):
        self.buf = b""
        self.info = info

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            path = head[0].split(" ")[1].split("?")[0]
            if path in ("/generate", "/v1/completions", "/v1/chat/completions"):
                out = _response(200, ANSWER)
            elif path in ("/health", "/health_generate"):
                out = _response(200, b"")
            elif path in ("/get_server_info", "/abort_request"):
                out = _response(200, self.info)
            else:
                out = _response(404, b"{}")
            self.transport.write(out)


def run_stub(port: int, bootstrap_port: int) -> None:
    info = json.dumps(
        {
            "disaggregation_bootstrap_port": bootstrap_port,
            "engine": {"num_running_reqs": 0, "num_waiting_reqs": 0},
        }
    ).encode()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _StubProtocol(info), "127.0.0.1", port)
        print("stub ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# ---- processes --------------------------------------------------------------------


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start_stub() -> tuple[Proc, str]:
    """A stub worker process (this file with ``--stub``), started by ``pdcore.up.launch``."""

    def cmd(ports: list[int]) -> list[str]:
        return [sys.executable, __file__, "--stub", *map(str, ports)]

    stub = Proc("stub", cmd, want_ports=[None, None], env=_env()).wait_healthy(60)
    return stub, stub.url


def start_router(*args: str) -> tuple[Proc, str]:
    # Its log file takes what it writes: warnings only, and a healthy run writes none.
    router = launch.start_router("--log-level", "warning", *args, env=_env())
    router.wait_healthy(60)
    return router, router.url


def stop(proc: Proc) -> None:
    proc.stop(grace=10)


# ---- client -----------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, body)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.request = (
            b"POST /generate HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (host.encode(), self.port, len(BODY), BODY)
        )

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self) -> tuple[int, bytes]:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, await self.reader.readexactly(int(headers["content-length"]))
        body = b""  # chunked
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]

    def close(self) -> None:
        self.writer.close()


def _check(status: int, body: bytes) -> None:
    if status != 200 or json.loads(body)["text"] != " world, this is a stub":
        raise RuntimeError(f"bad answer {status}: {body[:200]!r}")


async def sequential(url: str, n: int) -> list[float]:
    conn = await Conn(url).open()
    out = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            status, body = await conn.post()
            out.append(time.perf_counter() - t)
            _check(status, body)
    finally:
        conn.close()
    return out


async def saturate(url: str, concurrency: int, duration: float) -> tuple[int, float, list]:
    conns = [await Conn(url).open() for _ in range(concurrency)]
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def loop(conn: Conn) -> int:
        done = 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, body = await conn.post()
            latencies.append(time.perf_counter() - t)
            _check(status, body)
            done += 1
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return sum(counts), elapsed, latencies


def cpu_seconds(proc: Proc | None) -> float:
    """User + system CPU seconds the process used so far (Linux /proc)."""
    if proc is None:
        return 0.0
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def ms(x: float) -> float:
    return round(x * 1000, 3)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pkgs = {}
    for name in (
        "uvicorn",
        "httptools",
        "uvloop",
        "starlette",
        "fastapi",
        "aiohttp",
        "httpx",
        "h11",
    ):
        try:
            pkgs[name] = version(name)
        except Exception:
            pkgs[name] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": pkgs,
        "loadavg_at_start": list(os.getloadavg()),
        "note": "2 vCPUs shared with other jobs; client, router and stubs share them",
    }


async def bench(args) -> dict:
    info = machine()
    procs = []
    try:
        stub_direct, direct_url = start_stub()
        procs.append(stub_direct)
        stub_p, p_url = start_stub()
        stub_d, d_url = start_stub()
        procs += [stub_p, stub_d]
        reg, reg_url = start_router("--worker-urls", direct_url, "--policy", "round_robin")
        procs.append(reg)
        pd, pd_url = start_router(
            "--pd-disaggregation", "--prefill", p_url, "--decode", d_url, "--policy", "round_robin"
        )
        procs.append(pd)
        paths = {"direct": direct_url, "regular": reg_url, "pd": pd_url}
        routers = {"direct": None, "regular": reg, "pd": pd}

        for url in paths.values():  # warm up connections, imports, caches
            await sequential(url, args.warmup)
            await saturate(url, args.concurrency, 0.5)

        lat: dict[str, list[float]] = {k: [] for k in paths}
        round_p50: dict[str, list[float]] = {k: [] for k in paths}
        cpu = dict.fromkeys(paths, 0.0)
        per = max(1, args.n // args.rounds)
        for _ in range(args.rounds):
            for name, url in paths.items():
                before = cpu_seconds(routers[name])
                xs = await sequential(url, per)
                cpu[name] += cpu_seconds(routers[name]) - before
                lat[name] += xs
                round_p50[name].append(ms(statistics.median(xs)))

        tput: dict[str, dict] = {k: {"requests": 0, "seconds": 0.0, "lat": []} for k in paths}
        for _ in range(args.tput_rounds):
            for name, url in paths.items():
                n, secs, lats = await saturate(url, args.concurrency, args.duration)
                tput[name]["requests"] += n
                tput[name]["seconds"] += secs
                tput[name]["lat"] += lats
    finally:
        for p in reversed(procs):
            stop(p)
    info["loadavg_at_end"] = list(os.getloadavg())

    results = {}
    base = lat["direct"]
    for name in paths:
        xs = lat[name]
        t = tput[name]
        results[name] = {
            "requests": len(xs),
            "p50_ms": ms(statistics.median(xs)),
            "p90_ms": ms(pct(xs, 90)),
            "p99_ms": ms(pct(xs, 99)),
            "mean_ms": ms(statistics.fmean(xs)),
            "added_p50_ms": ms(statistics.median(xs) - statistics.median(base)),
            "added_p99_ms": ms(pct(xs, 99) - pct(base, 99)),
            "p50_ms_per_round": round_p50[name],
            "router_cpu_ms_per_request": ms(cpu[name] / len(xs)),
            "throughput_rps": round(t["requests"] / t["seconds"], 1),
            "throughput_requests": t["requests"],
            "p50_ms_at_concurrency": ms(statistics.median(t["lat"])),
            "p99_ms_at_concurrency": ms(pct(t["lat"], 99)),
        }
    return {
        "benchmark": "router overhead against stub workers",
        "command": "python bench/bench_router.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "config": {
            "sequential_requests_per_path": per * args.rounds,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "throughput_seconds_per_path": args.duration * args.tput_rounds,
            "request_body_bytes": len(BODY),
            "answer_bytes": len(ANSWER),
            "router_policy": "round_robin",
        },
        "goal_added_p50_ms": GOAL_ADDED_P50_MS,
        "results": results,
        "goal_met": {
            name: results[name]["added_p50_ms"] <= GOAL_ADDED_P50_MS for name in ("regular", "pd")
        },
    }


def summary(out: dict) -> str:
    rows = [
        "path      p50 ms  p99 ms  added p50  added p99  router CPU ms/req  req/s @c={}".format(
            out["config"]["concurrency"]
        )
    ]
    for name, r in out["results"].items():
        rows.append(
            f"{name:8s} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['added_p50_ms']:10.3f} "
            f"{r['added_p99_ms']:10.3f} {r['router_cpu_ms_per_request']:18.3f} "
            f"{r['throughput_rps']:10.1f}"
        )
    rows.append(f"goal added p50 <= {GOAL_ADDED_P50_MS} ms: {out['goal_met']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stub", nargs=2, type=int, metavar=("PORT", "BOOTSTRAP_PORT"))
    parser.add_argument("--n", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--tput-rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench/results/router_overhead.json"))
    args = parser.parse_args()
    if args.stub:
        run_stub(*args.stub)
        return
    out = asyncio.run(bench(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(summary(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
