"""The DP leaders' serving loop: every DP group runs each forward together.

Under DP attention the MLP of every layer gathers the tokens of all DP groups
and all-reduces over all TP ranks, so a forward is collective over every rank.
Each DP leader runs its own engine. Once per loop iteration every leader picks
its next batch (maybe none), then the leaders trade ``[tokens, stop]`` (one
all-gather over their gloo group). When any group has tokens, every leader
runs exactly one forward, its batch or an idle pass of zero tokens, with all
groups' token counts in the step plan (the MLP's gather needs them). A stop
(SIGTERM, or the front end gone) seen by any leader stops them all in the
same iteration; each then stops its own followers.

Idle leaders sleep in their socket poll. A leader that finds work while the
others sleep (a request from the front end, KV arrived from prefill) first
pokes them awake (``LeaderWake``, one datagram each), so the forward starts at
once instead of after their poll timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback

from pdcore.distributed.state import leaders_gather, node_ip, tp
from pdcore.distributed.wire import leaders_gather_msgs
from pdcore.engine.io_struct import encode

logger = logging.getLogger(__name__)

# Idle leaders poll their sockets this long between trades (each one is a
# collective). It bounds only how late a dead front end is noticed: new work
# and stops wake the other leaders at once (LeaderWake).
IDLE_POLL_MS = 250


class LeaderWake:
    """A datagram socket per DP leader, on the address other nodes reach it at
    (loopback on one node); ``fileno()`` goes into the leader's poller. Every leader
    creates one at the same point (collective)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((node_ip(), 0))
        self.sock.setblocking(False)
        addrs = leaders_gather_msgs(
            self.sock.getsockname(), tuple[str, int], "wake-up address of a DP leader"
        )
        self.peers = [a for rank, a in enumerate(addrs) if rank != tp().dp_rank]

    def fileno(self) -> int:
        return self.sock.fileno()

    def others(self) -> None:
        for addr in self.peers:
            try:
                self.sock.sendto(b"!", addr)
            except OSError:  # a full buffer is a pending wake-up already
                pass

    def drain(self) -> None:
        try:
            while self.sock.recv(64):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.sock.close()


def trade(tokens: int, stop: bool) -> tuple[list[int], bool]:
    """``(every DP group's tokens this step, some leader stops)``; every DP leader
    calls it once per iteration."""
    rows = leaders_gather([tokens, int(stop)])
    return [r[0] for r in rows], any(r[1] for r in rows)


def lockstep_loop(engine, push, stop: dict, poll, drain, wake: LeaderWake, profiler) -> None:
    """A DP leader's loop (see the module docstring); returns when all leaders stop.

    ``poll(ms)`` waits for a message, a PD wake-up or ``wake``'s socket;
    ``drain()`` handles every message already queued."""
    parent = os.getppid()
    busy = False  # the last step had tokens somewhere: the next comes at once
    while True:
        if os.getppid() != parent and not stop["flag"]:
            logger.warning("parent process is gone; engine exiting")
            stop["flag"] = True
        if not (busy or engine.has_compute() or stop["flag"]):
            poll(IDLE_POLL_MS)
        wake.drain()
        drain()
        batch, failed = None, []
        try:
            batch = engine.dp_schedule()
        except Exception as e:
            failed = _failed(engine, e)
        _send(push, [*failed, *engine.take_outputs()])  # e.g. first tokens from prefill
        tokens = batch.num_tokens if batch is not None else 0
        if (tokens and not busy) or stop["flag"]:
            wake.others()  # they may be asleep in their poll
        try:
            counts, stopping = trade(tokens, stop["flag"])
        except Exception as e:  # another leader is gone (its sockets closed)
            logger.warning("DP leaders lost each other: %s", e)
            return
        if stopping:
            return
        busy = any(counts)
        if not busy:
            continue
        try:
            with profiler.step_scope():
                engine.dp_forward(batch, counts)
        except Exception as e:
            _send(push, _failed(engine, e))
        _send(push, engine.take_outputs())
        profiler.after_step()


def _send(push, outs: list) -> None:
    if outs:
        push.send(encode(outs))


def _failed(engine, e: Exception) -> list:
    logger.error("engine step failed:\n%s", traceback.format_exc())
    return engine.fail_all(f"internal engine error: {type(e).__name__}: {e}")
