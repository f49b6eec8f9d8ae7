"""The control server stays bounded: threads, connections, and no peer can starve another.

Spec: handlers run on a fixed pool of threads whatever the number of connections;
idle keep-alive connections and requests trickling in hold no thread, so a real
message gets through past any number of them; a full server makes room by closing
the least recently active connection that is not being answered, and otherwise
leaves new connections waiting in the listen backlog until one is free. Requests
sent back to back on one connection are answered in order; one that cannot be
framed gets a 400 ``ErrorReply``.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from pdcore.disaggregation.control import PATH, ControlServer, request
from pdcore.disaggregation.control_server import EVICT_AFTER_S
from pdcore.disaggregation.protocol import Ack, ErrorReply, Heartbeat, decode, encode

pytestmark = pytest.mark.timeout(60)


def post_bytes(body: bytes) -> bytes:
    head = f"POST {PATH} HTTP/1.1\r\nHost: peer\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_reply(sock: socket.socket) -> tuple[int, object]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, decode(resp.read())


def read_replies(sock: socket.socket, n: int) -> list[tuple[int, object]]:
    """``n`` replies that came back to back on ``sock`` (``Content-Length`` framed)."""
    f = sock.makefile("rb")
    replies = []
    for _ in range(n):
        status = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        replies.append((status, decode(f.read(length))))
    return replies


class BlockingHandler:
    """Answers ``Ack`` once released; counts the handlers running at once."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def __call__(self, msg):
        with self._lock:
            self.entered += 1
        self.release.wait(30)
        return Ack()

    def wait_entered(self, n: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while self.entered < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.entered


def test_handler_threads_stay_bounded_with_many_connections():
    handler = BlockingHandler()
    before = threading.active_count()
    server = ControlServer("127.0.0.1", 0, handler)
    socks = [connect(server.port) for _ in range(64)]
    try:
        for s in socks:
            s.sendall(post_bytes(encode(Heartbeat("d"))))
        handler.wait_entered(64, timeout=2)  # as many as the server lets run at once
        added = threading.active_count() - before
        assert added <= 17, (
            f"64 connections with a request each started {added} threads: a thread per "
            "connection lets any number of peers exhaust the engine process"
        )
        assert handler.entered >= 8, f"only {handler.entered} handlers ran at once"
        handler.release.set()
        replies = [read_reply(s) for s in socks]
        assert replies == [(200, Ack())] * 64, "every queued request must still be answered"
    finally:
        handler.release.set()
        for s in socks:
            s.close()
        server.close()


def test_idle_and_trickling_connections_do_not_starve_a_message():
    server = ControlServer("127.0.0.1", 0, lambda m: Ack(), workers=2)
    idle = [connect(server.port) for _ in range(8)]
    trickling = [connect(server.port) for _ in range(8)]
    try:
        for s in trickling:  # a slowloris: headers that never end
            s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: peer\r\nContent-Len".encode())
        time.sleep(0.2)
        start = time.monotonic()
        assert request(server.address, Heartbeat("d"), 5) == Ack()
        took = time.monotonic() - start
        assert took < 2.0, (
            f"a real message took {took:.2f}s behind 16 idle or trickling connections "
            "on a 2-thread server: they must not hold its threads"
        )
    finally:
        for s in idle + trickling:
            s.close()
        server.close()


def test_a_full_server_closes_the_least_recently_active_idle_connection():
    server = ControlServer("127.0.0.1", 0, lambda m: Ack(), max_connections=4)
    idle = [connect(server.port) for _ in range(4)]
    try:
        deadline = time.monotonic() + 5
        while server.stats()["connections_open"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(EVICT_AFTER_S + 0.1)  # a connection just opened may have a request coming
        assert request(server.address, Heartbeat("d"), 5) == Ack(), (
            "a full server must make room for a real message"
        )
        stats = server.stats()
        assert stats["connections_evicted"] >= 1 and stats["connections_open"] <= 4, stats
        idle[0].settimeout(2)
        assert idle[0].recv(1) == b"", "the oldest idle connection should have been closed"
    finally:
        for s in idle:
            s.close()
        server.close()


def test_when_every_connection_is_being_answered_a_new_one_waits_then_is_served():
    handler = BlockingHandler()
    server = ControlServer("127.0.0.1", 0, handler, workers=1, max_connections=2)
    busy = [connect(server.port) for _ in range(2)]
    late: list = []
    try:
        for s in busy:
            s.sendall(post_bytes(encode(Heartbeat("d"))))
        assert handler.wait_entered(1) == 1
        thread = threading.Thread(
            target=lambda: late.append(request(server.address, Heartbeat("d"), 10))
        )
        thread.start()
        time.sleep(0.3)
        assert not late and server.stats()["connections_open"] == 2, (
            "a connection past the limit was taken while every open one is being answered"
        )
        handler.release.set()
        thread.join(10)
        assert late == [Ack()], "the waiting connection must be served once one is free"
        assert [read_reply(s) for s in busy] == [(200, Ack())] * 2
        assert server.stats()["worker_threads"] == 1
    finally:
        handler.release.set()
        for s in busy:
            s.close()
        server.close()


def test_requests_sent_back_to_back_on_one_connection_are_answered_in_order():
    server = ControlServer("127.0.0.1", 0, lambda m: ErrorReply(m.sender_id))
    try:
        with connect(server.port) as s:
            s.sendall(b"".join(post_bytes(encode(Heartbeat(f"p{i}"))) for i in range(3)))
            replies = read_replies(s, 3)
        assert replies == [(200, ErrorReply(f"p{i}")) for i in range(3)], replies
    finally:
        server.close()


@pytest.mark.parametrize(
    "raw, why",
    [
        (f"POST {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "Content-Length"),
        (f"POST {PATH} HTTP/1.1\r\nContent-Length: {1 << 30}\r\n\r\n", "bad Content-Length"),
        (f"POST {PATH} HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "bad Content-Length"),
    ],
    ids=["chunked", "too-large", "empty"],
)
def test_a_request_that_cannot_be_framed_gets_a_400_error_reply(raw, why):
    server = ControlServer("127.0.0.1", 0, lambda m: Ack())
    try:
        with connect(server.port) as s:
            s.sendall(raw.encode())
            status, reply = read_reply(s)
        assert status == 400 and isinstance(reply, ErrorReply), (status, reply)
        assert reply.code == "bad_request" and why in reply.message, reply
    finally:
        server.close()
