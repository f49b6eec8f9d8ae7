"""The fault proxy against a tiny echo server: every mode does what it says (fast)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest
from chaos.fault_proxy import Fault, FaultProxy
from e2e.server_process import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo):
    p = FaultProxy(echo, name="echo", seed=1)
    yield p
    p.close()


def _connect(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _recv_until_closed(s: socket.socket) -> tuple[bytes, str]:
    """Everything the proxy sends until it closes: (bytes, "eof" | "reset")."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        return out, "reset"
    return out, "eof"


def test_pass_through_keeps_a_connection_and_counts_exchanges(proxy):
    with _connect(proxy) as s:
        for i in range(3):
            msg = f"hello {i}".encode() * 100
            s.sendall(msg)
            assert _recv_exactly(s, len(msg)) == msg
    time.sleep(0.1)
    snap = proxy.snapshot()
    assert snap["connections"] == 1 and snap["exchanges"] == 3 and snap["injected"] == {}


def test_delay_holds_the_exchange(proxy):
    proxy.arm(Fault("delay", delay_ms=300))
    with _connect(proxy) as s:
        start = time.monotonic()
        s.sendall(b"ping")
        assert _recv_exactly(s, 4) == b"ping"
        assert time.monotonic() - start >= 0.29
        start = time.monotonic()  # the next exchange passes at once
        s.sendall(b"pong")
        assert _recv_exactly(s, 4) == b"pong"
        assert time.monotonic() - start < 0.2
    assert proxy.snapshot()["injected"] == {"delay": 1}


def test_drop_closes_without_a_reply(proxy):
    proxy.arm(Fault("drop"))
    with _connect(proxy) as s:
        s.sendall(b"request")
        assert _recv_until_closed(s) == (b"", "eof")
    assert proxy.snapshot()["injected"] == {"drop": 1}


def test_blackhole_answers_nothing_then_resets(proxy):
    proxy.arm(Fault("blackhole", hold_s=0.5))
    with _connect(proxy) as s:
        start = time.monotonic()
        s.sendall(b"request")
        out, how = _recv_until_closed(s)
        assert (out, how) == (b"", "reset")
        assert 0.45 <= time.monotonic() - start < 3
    assert proxy.snapshot()["injected"] == {"blackhole": 1}


def test_reset_after_n_bytes_cuts_the_answer(proxy):
    """100 bytes go up, so 50 of the 150 allowed come back before the RST."""
    proxy.arm(Fault("reset", after_bytes=150))
    with _connect(proxy) as s:
        s.sendall(b"x" * 100)
        out, how = _recv_until_closed(s)
    assert (len(out), how) == (50, "reset")
    assert proxy.snapshot()["injected"] == {"reset": 1}


def test_reset_counting_only_the_answer(proxy):
    """100 bytes go up whole; 30 of the answer come back before the RST."""
    proxy.arm(Fault("reset", after_bytes=30, answer_only=True))
    with _connect(proxy) as s:
        s.sendall(b"x" * 100)
        out, how = _recv_until_closed(s)
    assert (len(out), how) == (30, "reset")


def test_a_reset_that_never_fires_is_drawn_not_injected(proxy):
    proxy.arm(Fault("reset", after_bytes=10_000))
    with _connect(proxy) as s:
        s.sendall(b"x" * 10)
        assert _recv_exactly(s, 10) == b"x" * 10
    time.sleep(0.1)
    snap = proxy.snapshot()
    assert (snap["drawn"], snap["injected"]) == ({"reset": 1}, {})


def test_reset_at_zero_bytes_cuts_the_request(proxy):
    proxy.arm(Fault("reset", after_bytes=0))
    with _connect(proxy) as s:
        s.sendall(b"x" * 100)
        assert _recv_until_closed(s) == (b"", "reset")


def test_slow_forwards_in_delayed_pieces(proxy):
    proxy.arm(Fault("slow", delay_ms=20, chunk=256))
    with _connect(proxy) as s:
        start = time.monotonic()
        s.sendall(b"y" * 2048)
        assert _recv_exactly(s, 2048) == b"y" * 2048
        # 8 pieces up and 8 down (the echo may send them back as fewer reads)
        assert time.monotonic() - start >= 8 * 0.02
    assert proxy.snapshot()["injected"] == {"slow": 1}


def test_slow_ends_after_hold_s(proxy):
    proxy.arm(Fault("slow", delay_ms=100, chunk=1, hold_s=0.3))
    with _connect(proxy) as s:
        s.sendall(b"ab")  # 2 pieces up, 2 down: >= 0.3 s
        assert _recv_exactly(s, 2) == b"ab"
        time.sleep(0.1)
        start = time.monotonic()
        s.sendall(b"cd" * 100)
        assert _recv_exactly(s, 200) == b"cd" * 100
        assert time.monotonic() - start < 0.5


def test_upstream_down_resets_the_client():
    p = FaultProxy(free_port(), name="nowhere")
    try:
        try:
            with _connect(p) as s:
                s.sendall(b"request")
                got = _recv_until_closed(s)
        except (ConnectionResetError, BrokenPipeError):
            return  # reset before or while sending
        assert got == (b"", "reset")
    finally:
        p.close()


def test_faults_apply_per_exchange_on_a_keep_alive_connection(proxy):
    with _connect(proxy) as s:
        s.sendall(b"first")
        assert _recv_exactly(s, 5) == b"first"
        proxy.arm(Fault("drop"))
        s.sendall(b"second")
        assert _recv_until_closed(s) == (b"", "eof")


def test_random_faults_are_seeded_and_counted(echo):
    menu = [
        (1.0, lambda rng: Fault("delay", delay_ms=rng.uniform(1, 5))),
        (1.0, lambda rng: Fault("drop")),
    ]

    def run(seed: int) -> dict:
        p = FaultProxy(echo, name="rand", seed=seed)
        p.set_rate(0.3, menu)
        try:
            for _ in range(40):
                with _connect(p) as s:
                    s.sendall(b"ab")
                    _recv_exactly(s, 2)  # b"" when dropped
            time.sleep(0.1)
            return p.snapshot()["injected"]
        finally:
            p.close()

    first = run(7)
    assert first == run(7)
    assert 4 <= sum(first.values()) <= 24, first
    assert set(first) == {"delay", "drop"}


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")


def test_an_armed_fault_waits_for_a_matching_exchange(proxy):
    proxy.arm(Fault("drop"), match=b"POST /generate")
    with _connect(proxy) as s:
        s.sendall(b"GET /health")
        assert _recv_exactly(s, 11) == b"GET /health"
        s.sendall(b"POST /generate {}")
        assert _recv_until_closed(s) == (b"", "eof")
    assert proxy.snapshot()["drawn"] == {"drop": 1}


def test_a_match_in_the_second_read_of_an_exchange_is_found(proxy):
    """Headers and body sent apart (as http.client sends a larger body)."""
    proxy.arm(Fault("drop"), match=b"TransferRequest")
    with _connect(proxy) as s:
        s.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 15\r\n\r\n")
        time.sleep(0.01)
        s.sendall(b"TransferRequest")
        assert _recv_until_closed(s) == (b"", "eof")
    assert proxy.snapshot()["injected"] == {"drop": 1}
