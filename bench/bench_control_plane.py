"""PD control plane throughput: control messages per second, before and after keep-alive.

A control server with a trivial handler (answers ``Ack``) runs in a child process on
127.0.0.1 (as the engine process serves it); this process sends chunk notices like
the ones prefill sends decode for Mooncake (``ChunkDone``, no aux row) and counts
the replies, for

* ``sequential``: one sender, back to back;
* ``concurrent``: ``--senders`` threads (default 8) sending back to back at once;

each with and without ``--disaggregation-secret`` sealing. Paths, measured in the
same run, in interleaved rounds (so background load hits all alike):

* ``before``: the control plane of ``--baseline-ref`` (default a4d2314), loaded from
  git: a thread-per-connection server and a new TCP connection per message;
* ``before_client_after_server``: that old client (a connection per message)
  against the new bounded server, to tell the two changes apart;
* ``after``: this tree's control plane: bounded server, keep-alive client.

Writes ``bench/results/control_plane.json`` (medians of ``--rounds`` rounds, the
per-round values, the machine and the date) and prints a table.

    python bench/bench_control_plane.py [--rounds 3] [--seconds 2] [--senders 8]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "control_plane.json"
SECRET = "bench-control-plane-secret"
PATHS = ("before", "before_client_after_server", "after")
CONTROL = "core/disaggregation/control.py"


def load_control(ref: str | None, baseline_file: str | None = None):
    """This tree's control module, or the one of git ``ref`` (as a separate module;
    read from ``baseline_file`` instead where there is no git history)."""
    if ref is None:
        from pdcore.disaggregation import control

        return control
    if baseline_file:
        source = Path(baseline_file).read_text()
    else:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:{CONTROL}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    path = Path(tempfile.mkdtemp()) / f"control_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"control_{ref}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the server (runs as ``bench_control_plane.py --serve REF|new SEALED``) ----------


def serve(ref: str, sealed: bool, baseline_file: str | None) -> None:
    from pdcore.disaggregation.auth import to_key
    from pdcore.disaggregation.protocol import Ack

    control = load_control(None if ref == "new" else ref, baseline_file)
    ack = Ack()
    server = control.ControlServer(
        "127.0.0.1", 0, lambda msg: ack, to_key(SECRET) if sealed else None
    )
    print(server.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.close()


class Server:
    def __init__(self, ref: str, sealed: bool, baseline_file: str | None):
        more = ["--baseline-file", baseline_file] if baseline_file else []
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", ref, "1" if sealed else "0", *more],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.addr = f"127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


# ---- the client ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(request, addr: str, key, senders: int, seconds: float, server_pid: int):
    """(replies per second, CPU microseconds per reply of client and server together),
    ``senders`` threads sending back to back for ``seconds``. The CPU figure holds on a
    busy machine where the rate mostly measures what other processes left us."""
    from pdcore.disaggregation.protocol import Ack, ChunkDone

    counts = [0] * senders
    start = threading.Barrier(senders + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def send(i: int) -> None:
        start.wait()
        n, chunk = 0, 0
        try:
            while not stop.is_set():
                msg = ChunkDone(room=2**62 + i, chunk=chunk, is_last=False, num_pages=16)
                reply = request(addr, msg, 5.0, key)
                if reply != Ack():
                    raise RuntimeError(f"unexpected reply {reply!r}")
                n, chunk = n + 1, chunk + 1
        except BaseException as e:  # reported below: a failing path must not count
            errors.append(e)
        counts[i] = n

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    cpu0 = time.process_time() + cpu_seconds(server_pid)
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    cpu = time.process_time() + cpu_seconds(server_pid) - cpu0
    if errors:
        raise RuntimeError(f"{len(errors)} sender(s) failed: {errors[0]!r}")
    n = max(1, sum(counts))
    return n / took, cpu / n * 1e6


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--senders", type=int, default=8, help="threads of the concurrent case")
    ap.add_argument("--baseline-ref", default="a4d2314", help="git ref of the 'before' code")
    ap.add_argument("--baseline-file", help="that ref's control.py, where git is not at hand")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1] == "1", args.baseline_file)
        return

    from pdcore.disaggregation.auth import to_key

    old = load_control(args.baseline_ref, args.baseline_file)
    new = load_control(None)
    clients = {"before": old, "before_client_after_server": old, "after": new}
    servers = {"before": args.baseline_ref, "before_client_after_server": "new", "after": "new"}
    cases = [(mode, sealed) for mode in ("sequential", "concurrent") for sealed in (False, True)]
    info = machine()
    samples: dict[str, dict[str, list[float]]] = {p: {} for p in PATHS}
    cpu_us: dict[str, dict[str, list[float]]] = {p: {} for p in PATHS}
    for r in range(args.rounds):
        for mode, sealed in cases:
            case = f"{mode}{'_sealed' if sealed else ''}"
            key = to_key(SECRET) if sealed else None
            senders = 1 if mode == "sequential" else args.senders
            order = PATHS if r % 2 == 0 else tuple(reversed(PATHS))  # alternate
            for path in order:
                server = Server(servers[path], sealed, args.baseline_file)
                try:
                    send = clients[path].request
                    pid = server.proc.pid
                    rate(send, server.addr, key, senders, 0.2, pid)  # warm up
                    value, us = rate(send, server.addr, key, senders, args.seconds, pid)
                finally:
                    server.close()
                samples[path].setdefault(case, []).append(round(value, 1))
                cpu_us[path].setdefault(case, []).append(round(us, 1))
                print(
                    f"round {r + 1} {case:<20} {path:<28} {value:9.1f} msgs/s {us:8.1f} CPU us/msg",
                    flush=True,
                )
    info["loadavg_at_end"] = list(os.getloadavg())
    results = {
        path: {
            case: {
                "msgs_per_s_median": statistics.median(v),
                "msgs_per_s_per_round": v,
                "cpu_us_per_msg_median": statistics.median(cpu_us[path][case]),
                "cpu_us_per_msg_per_round": cpu_us[path][case],
            }
            for case, v in by_case.items()
        }
        for path, by_case in samples.items()
    }
    speedup = {
        case: round(
            results["after"][case]["msgs_per_s_median"]
            / results["before"][case]["msgs_per_s_median"],
            2,
        )
        for case in results["after"]
    }
    report = {
        "benchmark": "PD control plane messages per second (trivial handler, 127.0.0.1)",
        "command": "python bench/bench_control_plane.py " + " ".join(sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "rounds": args.rounds,
            "seconds_per_measurement": args.seconds,
            "concurrent_senders": args.senders,
            "message": "ChunkDone(room, chunk, is_last=False, num_pages=16), no aux row",
            "baseline_ref": args.baseline_ref,
            "server": "a child process; the client threads in this one",
        },
        "results": results,
        "after_over_before_msgs_per_s": speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmedians of {args.rounds} rounds ({info['nproc']} CPUs, {info['cpu']})")
    for metric, unit in (("msgs_per_s_median", "msgs/s"), ("cpu_us_per_msg_median", "CPU us/msg")):
        print(f"{unit:<20}" + "".join(f"{p:>30}" for p in PATHS))
        for case in speedup:
            row = "".join(f"{results[p][case][metric]:>30.1f}" for p in PATHS)
            print(f"{case:<20}{row}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
