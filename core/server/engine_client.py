"""The ZMQ link to the engine process: sockets, receive loop, stats replies, liveness.

The front end binds both sockets (PUSH to the engine's input, PULL for its
outputs) and the engine connects, so either side may start first. ``TokenOut``
and ``EngineError`` go to ``on_output``; ``EngineStats`` and ``ProfileReply``
replies resolve their waiter by token, and a stats reply whose token was not
issued here answers the pending ``FlushCacheReq`` (which carries no token). A
watcher polls ``engine_alive``: once the engine is gone (or the socket breaks)
``on_dead(reason)`` runs once and every waiter fails with 503.

Under DP attention there is one engine input per DP leader (``in_addrs``, all
leaders push to the one output): a request goes to one leader, aborts and
flushes to all, and stats are asked of every leader and summed (``dp_stats``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import msgspec
import zmq
import zmq.asyncio

from pdcore.engine import io_struct
from pdcore.engine.io_struct import (
    EngineStats,
    FlushCacheReq,
    ProfileReply,
    StartProfileReq,
    StatsReq,
    StopProfileReq,
)
from pdcore.server.dp_stats import merge_stats
from pdcore.server.errors import RequestError

logger = logging.getLogger(__name__)
# Stopping the profiler writes the whole trace before the engine answers.
PROFILE_TIMEOUT_S = 300.0


class EngineClient:
    def __init__(
        self,
        in_addr: str | list[str],
        out_addr: str,
        *,
        on_output: Callable[[object, float], None],
        on_dead: Callable[[RequestError], None],
        engine_alive: Callable[[], bool] | None = None,
        health_poll_s: float = 0.5,
        timeout_s: float = 10.0,
    ):
        self.in_addrs = [in_addr] if isinstance(in_addr, str) else list(in_addr)
        self.out_addr = out_addr
        self._on_output, self._on_dead = on_output, on_dead
        self._engine_alive = engine_alive
        self._health_poll_s = health_poll_s
        self.timeout_s = timeout_s
        self._stats_waiters: dict[int, asyncio.Future] = {}
        self._profile_waiters: dict[int, asyncio.Future] = {}
        self._flush_waiters: list[asyncio.Future] = []
        self._tokens = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self._pushes: list[zmq.Socket] = []  # one per DP leader
        self._pull = None
        self.rank_stats: list[EngineStats] = []  # the last stats round, per DP leader
        self._contexts: list[zmq.Context] = []
        self.dead_reason: str | None = None

    @property
    def running(self) -> bool:
        return bool(self._pushes)

    @property
    def num_leaders(self) -> int:
        """DP leaders (engines) behind this client: 1 without DP attention."""
        return len(self.in_addrs)

    async def start(self) -> None:
        """Bind the sockets, start the receive and watcher tasks (idempotent)."""
        if self._tasks:
            return
        sync_ctx, async_ctx = zmq.Context(), zmq.asyncio.Context()
        self._contexts = [sync_ctx, async_ctx]
        # sync: sends never block (no HWM)
        self._pushes = [sync_ctx.socket(zmq.PUSH) for _ in self.in_addrs]
        self._pull = async_ctx.socket(zmq.PULL)
        socks = [(push, zmq.SNDHWM) for push in self._pushes] + [(self._pull, zmq.RCVHWM)]
        for sock, hwm in socks:
            sock.setsockopt(hwm, 0)
            sock.setsockopt(zmq.LINGER, 0)
        for push, addr in zip(self._pushes, self.in_addrs, strict=True):
            push.bind(addr)
        self._pull.bind(self.out_addr)
        self._tasks = [asyncio.create_task(self._recv_loop(), name="pdcore-recv")]
        if self._engine_alive is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="pdcore-watch"))
        await self._wait_connected()

    async def stop(self, error: RequestError) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._fail_waiters(error)
        for sock in [*self._pushes, self._pull]:
            if sock is not None:
                sock.close(linger=0)
        for ctx in self._contexts:
            ctx.term()
        self._pushes, self._pull = [], None
        self._contexts = []

    def connected(self) -> bool:
        """True while every connected engine (DP leader) can take messages."""
        return bool(self._pushes) and all(p.poll(0, zmq.POLLOUT) for p in self._pushes)

    def require(self) -> None:
        """Raise 503 unless the engine can take a request now."""
        if self.dead_reason is not None:
            raise RequestError(f"engine unavailable: {self.dead_reason}", 503)
        if not self.connected():
            raise RequestError("the engine is not connected", 503)

    def send(self, obj, dp_rank: int | None = None) -> None:
        self.send_bytes(io_struct.encode(obj), dp_rank)

    def send_bytes(self, data: bytes, dp_rank: int | None = None) -> None:
        """To DP leader ``dp_rank``, or to every leader (None)."""
        pushes = self._pushes if dp_rank is None else self._pushes[dp_rank : dp_rank + 1]
        for push in pushes:
            try:
                push.send(data, zmq.NOBLOCK)
            except zmq.Again:
                logger.warning("engine not connected; a message was dropped")

    async def stats(self) -> EngineStats:
        """The engines' stats, summed over DP leaders (each one's in ``rank_stats``)."""
        self.require()
        loop = asyncio.get_running_loop()
        tokens = [next(self._tokens) for _ in self._pushes]
        futures = [loop.create_future() for _ in tokens]
        self._stats_waiters.update(zip(tokens, futures, strict=True))
        for rank, token in enumerate(tokens):
            self.send(StatsReq(token=token), rank)
        try:
            parts = [await self._await(f, "a stats request") for f in futures]
        finally:
            for token in tokens:
                self._stats_waiters.pop(token, None)
        self.rank_stats = parts
        return merge_stats(parts)

    async def flush(self) -> EngineStats:
        """Send ``FlushCacheReq`` to every leader; their replies (``flushed`` set) or,
        failing that, the stats that follow them (each engine answers in order)."""
        self.require()
        loop = asyncio.get_running_loop()
        waiters = self._flush_waiters = [loop.create_future() for _ in self._pushes]
        try:
            self.send(FlushCacheReq())
            stats = await self.stats()
        finally:
            self._flush_waiters = []
        replies = [w.result() for w in waiters if w.done() and not w.cancelled()]
        return merge_stats(replies) if len(replies) == len(waiters) else stats

    async def profile(self, msg: StartProfileReq | StopProfileReq) -> ProfileReply:
        """Send a profile request (its ``token`` is set here) and await the reply
        (DP attention: DP rank 0's engine is profiled)."""
        self.require()
        msg.token = token = next(self._tokens)
        future = asyncio.get_running_loop().create_future()
        self._profile_waiters[token] = future
        self.send(msg, 0)
        try:
            return await self._await(future, "a profile request", PROFILE_TIMEOUT_S)
        finally:
            self._profile_waiters.pop(token, None)

    def mark_dead(self, reason: str) -> None:
        if self.dead_reason is not None:
            return
        logger.error("engine unavailable: %s", reason)
        self.dead_reason = reason
        error = RequestError(f"engine unavailable: {reason}", 503)
        self._fail_waiters(error)
        self._on_dead(error)

    async def _await(self, future: asyncio.Future, what: str, timeout_s: float | None = None):
        timeout_s = max(self.timeout_s, timeout_s or 0)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise RequestError(
                f"the engine did not answer {what} within {timeout_s:g}s", 503
            ) from None

    async def _wait_connected(self) -> None:
        """The engine reconnects to freshly bound sockets within its reconnect interval."""
        deadline = time.monotonic() + self.timeout_s
        while not self.connected() and time.monotonic() < deadline:
            if self._engine_alive is not None and not self._engine_alive():
                return
            await asyncio.sleep(0.01)
        if not self.connected():
            logger.warning("the engine has not connected to %s yet", ", ".join(self.in_addrs))

    async def _recv_loop(self) -> None:
        try:
            while True:
                data = await self._pull.recv()
                try:
                    outputs = io_struct.decode_from_engine(data)
                except msgspec.DecodeError as e:
                    logger.error("dropping an undecodable engine message: %s", e)
                    continue
                now = time.perf_counter()
                for out in outputs:
                    if isinstance(out, EngineStats):
                        self._on_stats(out)
                    elif isinstance(out, ProfileReply):
                        self._resolve(self._profile_waiters.get(out.token), out)
                    else:
                        self._on_output(out, now)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.exception("engine receive loop failed")
            self.mark_dead(f"the front end lost the engine connection ({e})")

    def _on_stats(self, stats: EngineStats) -> None:
        waiter = self._stats_waiters.get(stats.token)
        if waiter is None:  # a flush reply (it carries no token)
            waiter = next((w for w in self._flush_waiters if not w.done()), None)
        self._resolve(waiter, stats)

    @staticmethod
    def _resolve(waiter: asyncio.Future | None, reply) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def _watch(self) -> None:
        while self.dead_reason is None:
            await asyncio.sleep(self._health_poll_s)
            if not self._engine_alive():
                self.mark_dead("the engine process exited")

    def _fail_waiters(self, error: RequestError) -> None:
        for waiter in [*self._stats_waiters.values(), *self._profile_waiters.values()]:
            if not waiter.done():
                waiter.set_exception(error)
        for waiter in self._flush_waiters:
            waiter.cancel()  # its caller fails through its stats request
