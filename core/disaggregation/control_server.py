"""The control plane's HTTP/1.1 server: one selector thread, a fixed pool of workers.

Why not ``ThreadingHTTPServer``: it spends a thread on every connection for as long
as the connection lives, so idle keep-alive connections, or a client trickling its
headers (slowloris), hold threads without bound. Here one loop thread owns every
connection while it is idle or while a request arrives: it reads without blocking and
buffers until a request is whole (head and ``Content-Length`` body), and only then
hands it to a worker. The worker runs the handler, writes the reply and gives the
connection back. Idle connections and half-sent requests cost a file descriptor and
a buffer, never a thread.

Bounds:

* threads: the loop and at most ``workers`` workers (started as requests need them);
* connections: at most ``max_connections`` open. A new connection past that closes
  the open one silent the longest, if it has been for ``EVICT_AFTER_S``: idle, or its
  request still arriving that long after its first byte (no handler ran for it; a
  connection just opened, whose request may be on its way, is never picked); with
  none such, new connections wait in the listen backlog until there is room;
* time: an idle keep-alive connection is closed after ``idle_timeout``, a request
  must arrive whole within ``read_timeout`` of its first byte (peers send a message
  whole at once), and a peer has ``write_timeout`` to take a reply.

A request the server cannot frame (a bad or too large ``Content-Length``, a chunked
body, a body cut short by the peer's end of stream) gets a 400 whose body is an
``ErrorReply`` (an oversized head a 431), and the connection closes.
"""

from __future__ import annotations

import collections
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pdcore.disaggregation.protocol import ErrorReply, encode

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
DEFAULT_MAX_CONNECTIONS = 256
MAX_HEAD = 16 << 10  # request line and headers
WRITE_TIMEOUT_S = 10.0
EVICT_AFTER_S = 1.0  # a connection silent this long may be closed to make room
# After the reply that ends a connection, what the peer still sends is read and
# dropped this long before closing: closing on unread bytes would reset the
# connection and could destroy the reply before the peer reads it.
LINGER_S = 2.0
KEEP, LINGER, CLOSE = "keep", "linger", "close"  # a connection after its reply
BACKLOG = 128
RECV_SIZE = 65536
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str  # the peer's host
    close: bool  # the connection ends after the reply
    error: str = ""  # why the server could not frame it (answered without a handler)
    error_status: int = 400


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str


Handle = Callable[[Request], Reply]


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    client: str
    buf: bytearray = field(default_factory=bytearray)
    last_active: float = 0.0
    request_started: float | None = None  # first byte of a request still arriving
    busy: bool = False  # a worker owns it (reading nothing, answering)
    linger_until: float | None = None  # answered for the last time; drop what comes


class BoundedHttpServer:
    """Serves ``handle(Request) -> Reply`` on ``host:port`` within the bounds above."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handle,
        *,
        name: str = "pd-control",
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_body: int,
        idle_timeout: float,
        read_timeout: float,
        write_timeout: float = WRITE_TIMEOUT_S,
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._handle = handle
        self._name = name
        self.workers = workers
        self.max_connections = max_connections
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._tick = min(0.5, idle_timeout / 4, read_timeout / 4)
        # The loop thread alone touches _conns, the selector and a connection that is
        # not busy; a worker alone touches a busy one. A worker hands a connection
        # back through _returned (under _lock) and wakes the loop with a byte.
        self._conns: set[_Conn] = set()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accepting = True
        # _lock guards _returned, _closed, _threads, _idle_workers, _unclaimed and the
        # counters. Each queued job is claimed by one worker when it is queued: an idle
        # one (_idle_workers - 1), a new one, or, with every worker busy, the next to
        # finish (_unclaimed + 1); so the pool grows only when no worker is free.
        self._lock = threading.Lock()
        self._returned: collections.deque[tuple[_Conn, str]] = collections.deque()
        self._closed = False
        self._jobs: queue.SimpleQueue[tuple[_Conn, Request] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle_workers = 0
        self._unclaimed = 0
        self._accepted = 0
        self._evicted = 0
        self._loop = threading.Thread(target=self._serve, name=f"{name}-{self.port}", daemon=True)
        self._loop.start()

    def stats(self) -> dict[str, int]:
        """Counters for tests and benchmarks: connections accepted and evicted so far,
        connections open now and worker threads started."""
        with self._lock:
            return {
                "connections_accepted": self._accepted,
                "connections_evicted": self._evicted,
                "connections_open": len(self._conns),
                "worker_threads": len(self._threads),
            }

    def close(self) -> None:
        """Stop accepting, close every connection and end the threads (a handler
        already running finishes first)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        self._wake()
        self._loop.join(10)
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join(1)

    # ---- the loop thread ----------------------------------------------------------

    def _serve(self) -> None:
        next_sweep = 0.0
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                for key, _ in self._sel.select(self._tick):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if now >= next_sweep:  # once a tick, not once a message
                    self._expire(now)
                    next_sweep = now + self._tick
        except Exception:  # pragma: no cover - a bug here must not leave a silent port
            log.exception("control server loop failed")
        finally:
            for conn in list(self._conns):
                self._drop(conn)
            with self._lock:
                returned = list(self._returned)
                self._returned.clear()
            for conn, _ in returned:
                conn.sock.close()
            self._sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        while True:
            full = len(self._conns) >= self.max_connections
            if full and not self._evictable(time.monotonic()):
                self._pause_accepting()
                return
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors and the like: try again next tick
                log.warning("control server cannot accept: %s", e)
                return
            if full:
                self._evict_one()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, str(addr[0]), last_active=time.monotonic())
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            with self._lock:
                self._accepted += 1

    def _evictable(self, now: float) -> list[_Conn]:
        """Connections no worker owns that have been silent for ``EVICT_AFTER_S``."""
        return [c for c in self._conns if not c.busy and now - _silent_since(c) >= EVICT_AFTER_S]

    def _evict_one(self) -> None:
        """Close the connection silent the longest (see the module's docstring)."""
        free = self._evictable(time.monotonic())
        if not free:
            return
        oldest = min(free, key=_silent_since)
        log.debug("control server full: closing a connection from %s", oldest.client)
        self._drop(oldest)
        with self._lock:
            self._evicted += 1

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._sel.unregister(self._listener)
            self._accepting = False

    def _resume_accepting(self) -> None:
        if self._accepting:
            return
        if len(self._conns) < self.max_connections or self._evictable(time.monotonic()):
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")
            self._accepting = True

    def _read(self, conn: _Conn) -> None:
        if conn not in self._conns:  # evicted earlier in this round
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.linger_until is not None:
            if not data:
                self._drop(conn)
            return
        if not data:
            if conn.buf:  # the peer ended its side in the middle of a request
                self._dispatch(conn, self._unframed(conn, "request cut short by end of stream"))
            else:
                self._drop(conn)
            return
        now = time.monotonic()
        conn.last_active = now
        if not conn.buf:
            conn.request_started = now
        conn.buf += data
        self._dispatch_if_whole(conn)

    def _dispatch_if_whole(self, conn: _Conn) -> None:
        request = self._parse(conn)
        if request is not None:
            self._dispatch(conn, request)

    def _dispatch(self, conn: _Conn, request: Request) -> None:
        conn.busy = True
        conn.request_started = None
        self._sel.unregister(conn.sock)
        self._jobs.put((conn, request))
        with self._lock:
            spawn = False
            if self._idle_workers:
                self._idle_workers -= 1
            elif len(self._threads) < self.workers:
                spawn = True
                n = len(self._threads)
                t = threading.Thread(
                    target=self._work, name=f"{self._name}-{self.port}-w{n}", daemon=True
                )
                self._threads.append(t)
            else:
                self._unclaimed += 1
        if spawn:
            t.start()

    def _parse(self, conn: _Conn) -> Request | None:
        """The next whole request in ``conn.buf`` (taken out of it), a 400 request for
        one that cannot be framed, or None while it is still arriving."""
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > MAX_HEAD:
                return self._unframed(conn, "request head too large", 431)
            return None
        if end > MAX_HEAD:
            return self._unframed(conn, "request head too large", 431)
        lines = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._unframed(conn, "malformed request line")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return self._unframed(conn, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            return self._unframed(conn, "chunked bodies are not accepted; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= self.max_body:
            return self._unframed(conn, "bad Content-Length")
        if len(conn.buf) < end + 4 + length:
            return None
        body = bytes(conn.buf[end + 4 : end + 4 + length])
        del conn.buf[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (parts[2] == "HTTP/1.0" and connection != "keep-alive")
        return Request(parts[0], parts[1], headers, body, conn.client, close)

    def _unframed(self, conn: _Conn, why: str, status: int = 400) -> Request:
        conn.buf.clear()
        return Request("", "", {}, b"", conn.client, True, why, status)

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._lock:
            returned = list(self._returned)
            self._returned.clear()
        now = time.monotonic()
        for conn, after in returned:
            conn.busy = False
            if after == CLOSE or conn not in self._conns:
                self._conns.discard(conn)
                conn.sock.close()
                continue
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            if after == LINGER:
                conn.linger_until, conn.request_started = now + LINGER_S, None
                conn.buf.clear()
                continue
            conn.last_active = now
            conn.request_started = now if conn.buf else None
            self._dispatch_if_whole(conn)  # a request sent while this one was answered
        self._resume_accepting()

    def _expire(self, now: float) -> None:
        for conn in list(self._conns):
            if conn.busy:
                continue
            if conn.linger_until is not None:
                if now > conn.linger_until:
                    self._drop(conn)
            elif conn.request_started is not None:
                if now - conn.request_started > self.read_timeout:
                    log.debug("control server: a request from %s never arrived whole", conn.client)
                    self._drop(conn)
            elif now - conn.last_active > self.idle_timeout:
                self._drop(conn)
        self._resume_accepting()

    def _drop(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if not conn.busy:  # a busy one is closed when its worker gives it back
            self._sel.unregister(conn.sock)
            conn.sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the loop is gone

    # ---- workers -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, request = job
            after = self._answer(conn, request)
            with self._lock:
                if self._unclaimed:
                    self._unclaimed -= 1  # a queued job waits for this worker
                else:
                    self._idle_workers += 1
                if not self._closed:
                    self._returned.append((conn, after))
                    conn = None
            if conn is None:
                self._wake()
            else:
                conn.sock.close()

    def _answer(self, conn: _Conn, request: Request) -> str:
        """Run the handler and write its reply; what becomes of the connection."""
        if request.error:
            body = encode(ErrorReply(request.error, "bad_request"))
            reply = Reply(request.error_status, body, "application/msgpack")
        else:
            try:
                reply = self._handle(request)
            except Exception as e:  # a handler bug must answer, not hang the peer
                log.exception("control server handler failed")
                reply = Reply(500, f"{type(e).__name__}: {e}".encode(), "text/plain")
        head = (
            f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Error')}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            + ("Connection: close\r\n" if request.close else "")
            + "\r\n"
        )
        try:
            conn.sock.settimeout(self.write_timeout)
            conn.sock.sendall(head.encode("latin-1") + reply.body)
            conn.sock.setblocking(False)
            if request.close:
                conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return CLOSE
        return LINGER if request.close else KEEP


def _silent_since(conn: _Conn) -> float:
    """Since when ``conn`` has given no sign of a live peer: the first byte of a
    request still arriving (a live peer sends a message whole), else its last byte."""
    if conn.linger_until is not None:
        return 0.0  # answered for the last time: the first to go
    return conn.request_started if conn.request_started is not None else conn.last_active
