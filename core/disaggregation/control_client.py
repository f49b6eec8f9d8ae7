"""Keep-alive connections to control-plane peers, and the one retry that is safe.

A TCP connection per control message costs a handshake on both sides for every
chunk notice and heartbeat; here each peer address keeps up to
``MAX_IDLE_PER_PEER`` idle connections that later messages reuse (several threads
sending to one peer at once each take their own).

Retry rule. Control messages are not all idempotent (a ``TransferRequest`` or a
``ChunkDone`` acted on twice is not the same as once), so a message is sent a
second time, on a fresh connection and only once, when it surely did not reach
the peer whole:

* a reused idle connection the peer already closed or reset (its idle timeout, a
  restart) is found so by a non-blocking peek before anything is sent, and is
  replaced: nothing was sent on it;
* writing the request on a reused connection fails (broken pipe, reset): the peer
  holds at most part of the message, and a partial message reaches no handler.

Everything after the request was written whole is not retried, on a reused
connection or a fresh one: no reply, a reset or an end of stream before or during
the reply, a timeout. The peer may have acted on the message, so the caller gets
the error and its own recovery (aborting the room, counting a missed heartbeat)
decides. Nothing on a fresh connection is retried either: a refused connection is
how prefill learns that decode died, and it is reported as such.

A connection goes back to the pool only after a whole reply that leaves it open,
and one idle for longer than ``max_idle_s`` (shorter than the server's idle
timeout) is closed instead of reused, so a message rarely races the peer closing it.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time

MAX_IDLE_PER_PEER = 8


class ConnectionPool:
    """Idle HTTP/1.1 connections by peer address; ``post`` sends one request."""

    def __init__(self, max_idle_s: float, max_idle_per_peer: int = MAX_IDLE_PER_PEER):
        self.max_idle_s = max_idle_s
        self.max_idle_per_peer = max_idle_per_peer
        # _lock guards _idle only and is never held while a socket is used: a
        # connection taken out of _idle belongs to the one thread that took it.
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[tuple[http.client.HTTPConnection, float]]] = {}
        self.opened = 0  # connections opened so far (for tests and benchmarks)
        os.register_at_fork(after_in_child=self._forget)

    def post(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: dict,
        timeout: float,
        limit: int,
    ) -> tuple[int, bytes]:
        """POST ``body``; (status, reply body cut after ``limit`` + 1 bytes).

        Raises ``OSError`` or ``http.client.HTTPException`` when the peer cannot be
        reached or the exchange breaks (see the retry rule above)."""
        deadline = time.monotonic() + timeout
        conn = self._take(host, port)
        if conn is not None:
            conn.sock.settimeout(timeout)
            try:
                conn.request("POST", path, body, headers)
            except (OSError, http.client.HTTPException):
                conn.close()  # not written whole: no handler can have run; retry fresh
            else:
                return self._reply(host, port, conn, limit)
        remaining = max(0.001, deadline - time.monotonic())
        conn = http.client.HTTPConnection(host, port, timeout=remaining)
        with self._lock:
            self.opened += 1
        try:
            conn.request("POST", path, body, headers)
        except BaseException:
            conn.close()
            raise
        return self._reply(host, port, conn, limit)

    def clear(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()

    def _reply(
        self, host: str, port: int, conn: http.client.HTTPConnection, limit: int
    ) -> tuple[int, bytes]:
        try:
            resp = conn.getresponse()
            data = resp.read(limit + 1)
        except BaseException:
            conn.close()
            raise
        if conn.sock is not None and resp.isclosed() and not resp.will_close:
            self._put(host, port, conn)
        else:
            conn.close()
        return resp.status, data

    def _take(self, host: str, port: int) -> http.client.HTTPConnection | None:
        """A pooled connection to the peer that is still open, or None."""
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._idle.get((host, port))
                if not conns:
                    return None
                conn, since = conns.pop()
            if now - since <= self.max_idle_s and _still_open(conn.sock):
                return conn
            conn.close()

    def _put(self, host: str, port: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault((host, port), [])
            if len(conns) < self.max_idle_per_peer:
                conns.append((conn, time.monotonic()))
                return
        conn.close()

    def _forget(self) -> None:
        """In a forked child: the parent's connections are not this process's to use."""
        self._lock = threading.Lock()
        self._idle = {}


def _still_open(sock: socket.socket | None) -> bool:
    """Whether an idle connection can carry a request: nothing to read on it (the
    peer's close, a reset or stray bytes all mean it cannot)."""
    if sock is None:
        return False
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
    return False
