"""``pdcore.up.launch``: start, health, retry on a taken port, group stop, logs kept.

The processes are tiny (``python -m http.server``, ready when ``/`` answers 200), so
the launcher's own behaviour is tested in well under a second per process.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest

from pdcore.up import ports
from pdcore.up.launch import Cluster, Proc, StartFailed


def http_server(got: list[int]) -> list[str]:
    return [sys.executable, "-m", "http.server", str(got[0]), "--bind", "127.0.0.1"]


def web(tmp_path, name="web", **kw) -> Proc:
    return Proc(name, http_server, log_dir=tmp_path, health_path="/", **kw)


def test_a_start_that_loses_its_port_is_retried_on_fresh_ports(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        handed = iter([ports.Reservation(busy, [])])  # someone took it after the check

        def reserve():
            return next(handed, None) or ports.reserve()

        proc = web(tmp_path, reserve=reserve)
        try:
            proc.wait_healthy(30)
            assert proc.port != busy, "the retry should have picked a fresh port"
            assert proc.attempts == 2, f"expected one failed start and one retry: {proc.tail()}"
            assert "address in use; starting again" in proc.log_path.read_text()
        finally:
            proc.stop()


def test_a_port_the_caller_fixed_is_not_changed_behind_its_back(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = web(tmp_path, want_ports=[busy])
        try:
            with pytest.raises(StartFailed, match=r"web exited with code 1"):
                proc.wait_healthy(30)
            assert proc.attempts == 1, "a fixed port is the caller's choice: no silent move"
        finally:
            proc.stop()


def test_a_process_that_exits_fails_the_wait_with_its_last_lines(tmp_path):
    def bad(_):
        return [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]

    proc = Proc("bad", bad, log_dir=tmp_path)
    try:
        with pytest.raises(StartFailed, match=r"(?s)bad exited with code 3.*no model here"):
            proc.wait_healthy(30)
    finally:
        proc.stop()


def test_stop_ends_the_whole_process_group(tmp_path):
    def with_helper(got):
        return ["sh", "-c", f"sleep 300 & exec {' '.join(http_server(got))}"]

    proc = Proc("web", with_helper, log_dir=tmp_path, health_path="/").wait_healthy(30)
    helpers = psutil.Process(proc.pid).children(recursive=True)
    assert helpers, "the test needs a helper process in the group"
    proc.stop(grace=5)
    _, alive = psutil.wait_procs(helpers, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], (
        "a helper in the stopped process's group survived"
    )


def test_cluster_stops_everything_and_keeps_the_logs(tmp_path):
    with Cluster(tmp_path / "logs", grace=5) as cluster:
        a = cluster.add(web(cluster.log_dir, "a"))
        b = cluster.add(web(cluster.log_dir, "b"))
        cluster.wait_healthy(30)
        pids = [a.pid, b.pid]
        assert a.port != b.port
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == "zombie" for p in pids)
    kept = sorted(f.name for f in (tmp_path / "logs").iterdir())
    assert kept == ["a.log", "b.log"], f"the logs should outlive the cluster: {kept}"


LAUNCHER = """
import sys, time
from pdcore.up.launch import Proc
proc = Proc("web", lambda got: [sys.executable, "-m", "http.server", str(got[0]),
            "--bind", "127.0.0.1"], health_path="/").wait_healthy(30)
print(proc.pid, flush=True)
time.sleep(300)
"""


def test_a_launcher_killed_with_sigkill_leaves_no_process_behind():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(launcher.stdout.readline()))
        launcher.kill()
        launcher.wait(10)
        _, alive = psutil.wait_procs([child], timeout=10)
        assert not alive, "a process started from the main thread must die with its launcher"
    finally:
        launcher.kill()
