"""``pdcore.up.ports``: concurrent callers, in threads or processes, never share a port."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from pdcore.up import ports

HOLDER = """
import sys
from pdcore.up import ports
held = [ports.reserve() for _ in range({n})]
print(" ".join(str(r.port) for r in held), flush=True)
sys.stdin.read()  # hold the reservations until the parent closes our stdin
"""


def _holder(n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(n=n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _only(monkeypatch, *candidates: int) -> None:
    """Make ``reserve`` look only at these ports, and give up quickly."""
    monkeypatch.setattr(ports, "candidate_ranges", lambda: [range(p, p + 1) for p in candidates])
    monkeypatch.setattr(ports, "MAX_TRIES", 50)


def test_threads_reserving_at_once_never_get_the_same_port():
    got: list[int] = []
    held: list[ports.Reservation] = []
    lock = threading.Lock()

    def grab():
        mine = [ports.reserve() for _ in range(8)]
        with lock:
            held.extend(mine)
            got.extend(r.port for r in mine)

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(got) == 16 * 8, "every thread should have got its ports"
        assert len(set(got)) == len(got), f"a port was handed out twice: {sorted(got)}"
    finally:
        for r in held:
            r.release()


def test_processes_reserving_at_once_never_get_the_same_port():
    holders = [_holder(10) for _ in range(6)]
    try:
        got = [int(p) for h in holders for p in h.stdout.readline().split()]
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(30)
    assert len(got) == 60, f"every process should have reserved 10 ports, got {got}"
    assert len(set(got)) == len(got), f"two processes got the same port: {sorted(got)}"


def test_a_port_reserved_by_another_process_is_never_handed_out(monkeypatch):
    holder = _holder(1)
    try:
        port = int(holder.stdout.readline())
        _only(monkeypatch, port)
        with pytest.raises(ports.NoFreePort):
            ports.reserve()  # the only candidate is held elsewhere: refuse, never share it
    finally:
        holder.stdin.close()
        holder.wait(30)
    with ports.reserve() as again:  # the holder is gone: its lock went with it
        assert again.port == port, "a port whose holder exited should be free again"


def test_a_port_with_a_listening_socket_is_skipped(monkeypatch):
    with ports.reserve(2) as pair:
        busy_port, free_port = pair.ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", busy_port))
        busy.listen()
        _only(monkeypatch, busy_port, free_port)
        for _ in range(10):
            with ports.reserve() as r:
                assert r.port == free_port, f"{busy_port} is listened on and must be skipped"


def test_reserved_ports_lie_outside_the_kernels_ephemeral_range():
    low, high = ports.ephemeral_range()
    held = [ports.reserve() for _ in range(50)]
    try:
        inside = [r.port for r in held if low <= r.port <= high]
        assert not inside, f"ports in the ephemeral range {low}-{high} can be taken by the kernel"
    finally:
        for r in held:
            r.release()


def test_ephemeral_range_is_read_from_the_kernel_file_with_a_fallback(tmp_path):
    f = tmp_path / "ip_local_port_range"
    f.write_text("40000\t50000\n")
    assert ports.ephemeral_range(f) == (40000, 50000)
    assert ports.ephemeral_range(tmp_path / "missing") == ports.LINUX_EPHEMERAL
    ranges = ports.candidate_ranges((40000, 50000))
    assert all(r.stop <= 40000 or r.start > 50000 for r in ranges), ranges
    assert ports.candidate_ranges((1024, 65535)), "a range covering everything leaves a fallback"


def test_a_consecutive_run_is_reserved_as_a_whole():
    with ports.reserve(4) as run:
        assert run.ports == list(range(run.port, run.port + 4))
        with ports.reserve(4) as other:
            assert not set(run.ports) & set(other.ports), "two runs overlap"
