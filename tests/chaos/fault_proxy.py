"""A TCP fault proxy for chaos tests: pass bytes through, or break the exchange.

``FaultProxy(upstream_port)`` listens on its own port of 127.0.0.1 (an asyncio loop in
a daemon thread) and connects every client connection to the upstream port. It knows
nothing of HTTP, but it treats the first client bytes of a connection, and the first
client bytes after the upstream answered something, as the start of an *exchange*
(one HTTP/1.1 request on a keep-alive connection, one PD control message). At each
exchange it may apply a fault:

* ``delay``: hold the exchange's bytes ``delay_ms`` before forwarding them;
* ``slow``: for ``hold_s`` seconds forward both directions in ``chunk`` byte pieces,
  each ``delay_ms`` late (a slow link);
* ``drop``: swallow the exchange's bytes and close the client side without a reply
  (FIN), as a peer that died after reading the request;
* ``blackhole``: swallow the exchange's bytes, answer nothing, and reset the
  connection after ``hold_s`` (or when the client gives up first): a partition;
* ``reset``: forward ``after_bytes`` more bytes (either direction, or with
  ``answer_only`` only those of the answer) and then reset both sides (RST,
  ``SO_LINGER`` 0): a connection cut mid-request or mid-answer.

Which exchange gets a fault: ``arm(fault)`` queues one for the next exchange (with
``match=b"POST /generate"``: the next one whose first bytes contain that), and
``set_rate(p, menu)`` draws one with probability ``p`` at every exchange from a
seeded RNG. ``drawn`` counts the faults given to an exchange and ``injected`` those
that took effect, by kind: a ``reset`` counts when it fires, so one given to an
exchange whose connection closes first is drawn but not injected. If the upstream
cannot be reached the client connection is reset at once, which a client sees like a
refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("delay", "slow", "drop", "blackhole", "reset")
READ_SIZE = 65536
MATCH_WINDOW = 4096  # bytes of an exchange's start an armed fault's ``match`` is looked for in
MATCH_WAIT_S = 0.05  # how long to wait for more of them


@dataclass(frozen=True)
class Fault:
    kind: str
    delay_ms: float = 0.0  # delay, slow
    chunk: int = 512  # slow: bytes per piece
    hold_s: float = 5.0  # blackhole: until the reset; slow: how long
    after_bytes: int = 0  # reset
    answer_only: bool = False  # reset: count only the bytes coming back from upstream

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {KINDS}")


class _Conn:
    """One proxied connection's state, shared by its two pump directions."""

    def __init__(self, client_w: asyncio.StreamWriter):
        self.client_w = client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.answered = True  # upstream sent bytes since the client's last ones
        self.slow: Fault | None = None
        self.slow_until = 0.0
        self.reset_left: int | None = None  # bytes still allowed before an armed reset
        self.reset_answer_only = False
        self.closed = False
        self.ended = 0  # directions that reached EOF


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST: SO_LINGER on with a zero timeout, then abort the transport."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, name: str = "proxy", seed: int = 0, port: int = 0):
        self.name = name
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.injected: Counter = Counter()
        self.drawn: Counter = Counter()
        self.connections = 0
        self.exchanges = 0
        self._armed: deque[tuple[Fault, bytes | None]] = deque()
        self.recent: deque[tuple[float, bytes]] = deque(maxlen=20)  # exchanges' first bytes
        self._rate = 0.0
        self._menu: list[tuple[float, Callable[[random.Random], Fault]]] = []
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(port, started), name=f"fault-proxy-{name}", daemon=True
        )
        self._thread.start()
        started.wait(10)
        if self._server is None:
            raise RuntimeError(f"fault proxy {name} did not start")
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # ---- control (any thread) ---------------------------------------------------

    def arm(self, *faults: Fault, match: bytes | None = None) -> None:
        """Apply these faults to the next exchanges, in order; with ``match``, only to
        exchanges whose first bytes (one read) contain it."""
        with self._lock:
            self._armed.extend((f, match) for f in faults)

    def disarm(self) -> int:
        """Forget armed faults and the random rate; how many armed ones never fired."""
        with self._lock:
            left = len(self._armed)
            self._armed.clear()
            self._rate = 0.0
            return left

    def set_rate(
        self, rate: float, menu: list[tuple[float, Callable[[random.Random], Fault]]]
    ) -> None:
        """At each exchange, with probability ``rate``, apply ``make(rng)`` of an entry
        of ``menu`` (``(weight, make)`` pairs) picked by weight."""
        with self._lock:
            self._rate, self._menu = rate, list(menu)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "connections": self.connections,
                "exchanges": self.exchanges,
                "drawn": dict(self.drawn),
                "injected": dict(self.injected),
            }

    def reset_all(self) -> None:
        """Reset every open connection now (as a restarted host would)."""
        self._loop.call_soon_threadsafe(self._reset_all)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- the loop ---------------------------------------------------------------

    def _run(self, port: int, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start():
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", port, reuse_address=True, backlog=512
            )

        try:
            self._loop.run_until_complete(start())
        finally:
            started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        # Handlers still inside a fault (a blackhole's hold) end now, not at interpreter exit.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _reset_all(self) -> None:
        for conn in list(self._conns):
            conn.closed = True
            _rst(conn.client_w)
            _rst(conn.upstream_w)

    def _draw(self, first: bytes) -> Fault | None:
        with self._lock:
            self.exchanges += 1
            self.recent.append((time.monotonic(), first[:200]))
            fault = None
            for i, (armed, match) in enumerate(self._armed):
                if match is None or match in first:
                    fault = armed
                    del self._armed[i]
                    break
            if fault is None and self._rate and self.rng.random() < self._rate:
                weights = [w for w, _ in self._menu]
                fault = self.rng.choices([m for _, m in self._menu], weights)[0](self.rng)
            if fault is not None:
                self.drawn[fault.kind] += 1
            return fault

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        conn = _Conn(client_w)
        self._conns.add(conn)
        with self._lock:
            self.connections += 1
        try:
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                _rst(client_w)  # upstream down: the client sees its connection refused/reset
                return
            conn.upstream_w = up_w
            await asyncio.gather(
                self._pump(conn, client_r, up_w, from_client=True),
                self._pump(conn, up_r, client_w, from_client=False),
            )
        except Exception:  # a proxy never dies of one connection
            _rst(client_w)
            _rst(conn.upstream_w)
        except asyncio.CancelledError:  # closing the proxy: end quietly (no logged traceback)
            _rst(client_w)
            _rst(conn.upstream_w)
        finally:
            self._conns.discard(conn)

    async def _pump(self, conn: _Conn, reader, writer, from_client: bool) -> None:
        other = conn.upstream_w if from_client else conn.client_w
        while not conn.closed:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:  # this direction ended: pass the half-close on
                if not conn.closed:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                self._half_closed(conn)
                return
            eof = False
            if from_client and conn.answered:
                conn.answered = False
                data, eof = await self._read_more_for_match(reader, data)
                fault = self._draw(data)
                if fault is not None and not await self._apply(conn, fault, reader):
                    return
            elif not from_client:
                conn.answered = True
            if not await self._forward(conn, data, writer, other, from_client):
                return
            if from_client and eof:  # the client finished while we read ahead
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                self._half_closed(conn)
                return

    async def _read_more_for_match(self, reader, data: bytes) -> tuple[bytes, bool]:
        """An exchange's first bytes, read on (up to ``MATCH_WINDOW`` bytes, briefly)
        while an armed fault waits for a match they do not contain yet: a request's
        headers and body may come in separate reads. Returns (data, client EOF seen)."""
        while len(data) < MATCH_WINDOW:
            with self._lock:
                waiting = [m for _, m in self._armed if m is not None]
            if not waiting or any(m in data for m in waiting):
                break
            try:
                more = await asyncio.wait_for(reader.read(READ_SIZE), MATCH_WAIT_S)
            except asyncio.TimeoutError:
                break
            except (ConnectionError, OSError):
                return data, True
            if not more:
                return data, True
            data += more
        return data, False

    @staticmethod
    def _half_closed(conn: _Conn) -> None:
        """Close both sides once both directions ended."""
        conn.ended += 1
        if conn.ended == 2:
            conn.closed = True
            for w in (conn.client_w, conn.upstream_w):
                if w is not None:
                    w.close()

    async def _apply(self, conn: _Conn, fault: Fault, reader) -> bool:
        """Apply ``fault`` at the start of an exchange; False if the connection is gone."""
        if fault.kind == "delay":
            self._count("delay")
            await asyncio.sleep(fault.delay_ms / 1000)
            return True
        if fault.kind == "slow":
            self._count("slow")
            conn.slow, conn.slow_until = fault, time.monotonic() + fault.hold_s
            return True
        if fault.kind == "reset":  # counted when it fires
            conn.reset_left = max(0, fault.after_bytes)
            conn.reset_answer_only = fault.answer_only
            return True
        conn.closed = True
        self._count(fault.kind)
        if fault.kind == "drop":
            with contextlib.suppress(OSError, RuntimeError):
                conn.client_w.close()
            _rst(conn.upstream_w)
            return False
        # blackhole: read and discard until the client leaves or hold_s passes, then RST
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self._drain(reader), fault.hold_s)
        _rst(conn.client_w)
        _rst(conn.upstream_w)
        return False

    @staticmethod
    async def _drain(reader) -> None:
        while await reader.read(READ_SIZE):
            pass

    async def _forward(self, conn: _Conn, data: bytes, writer, other, from_client) -> bool:
        """Write ``data`` (slowly, or up to an armed reset); False once reset."""
        if conn.reset_left is not None and not (from_client and conn.reset_answer_only):
            if len(data) >= conn.reset_left:
                head = data[: conn.reset_left]
                if head:
                    writer.write(head)
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.drain()
                conn.closed = True
                self._count("reset")
                _rst(conn.client_w)
                _rst(conn.upstream_w)
                return False
            conn.reset_left -= len(data)
        if conn.slow is not None and time.monotonic() > conn.slow_until:
            conn.slow = None
        try:
            if conn.slow is None:
                writer.write(data)
                await writer.drain()
            else:
                step = max(1, conn.slow.chunk)
                for i in range(0, len(data), step):
                    await asyncio.sleep(conn.slow.delay_ms / 1000)
                    writer.write(data[i : i + step])
                    await writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            conn.closed = True
            _rst(other)
            return False
        return True
