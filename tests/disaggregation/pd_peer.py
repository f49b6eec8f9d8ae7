"""A prefill ``KVManager`` + bootstrap server in a spawned process, driven over a pipe.

The test process plays decode; this child plays prefill with its own ``KVPool``,
so every byte really crosses a process boundary through the transfer engine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import torch

from pdcore.disaggregation.aux import AuxData
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.kv_args import FINAL, KVArgs, KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.envs import DisaggregationEnv
from pdcore.kvcache.pool import KVPool, KVShape
from pdcore.up.ports import pick_port

free_port = pick_port  # the tests' name for the launcher's port reservations

MODEL = "tiny-test-model@1"
SHAPE = dict(num_layers=2, num_kv_heads=2, head_dim=8, page_size=4, dtype="float32")
ENV = dict(
    thread_pool_size=2,
    queue_size=2,
    bootstrap_timeout=2.0,
    heartbeat_interval=0.3,
    heartbeat_max_failure=2,
    waiting_timeout=30.0,
)


def make_pool(shape: dict, pages: int = 32) -> KVPool:
    s = dict(shape, dtype=getattr(torch, shape["dtype"]))
    return KVPool(KVShape(**s), pages)


def wait_state(room, timeout: float, until=FINAL) -> KVPoll:
    deadline = time.monotonic() + timeout
    while (st := room.poll()) not in until and time.monotonic() < deadline:
        time.sleep(0.01)
    return st


def _send(mgr: KVManager, pool: KVPool, room, chunks, aux, corrupt_room, seed):
    """Fill the chunks' pages with random KV, send them, return state and the bytes."""
    gen = torch.Generator().manual_seed(seed)
    pages = [p for c in chunks for p in c]
    for k, v in pool.layer_caches:
        for t in (k, v):
            t[pages] = torch.randn(t[pages].shape, generator=gen, dtype=t.dtype)
    expected = {p: [t[p].numpy().tobytes() for kv in pool.layer_caches for t in kv] for p in pages}
    if corrupt_room:
        write = mgr.aux.write
        mgr.aux.write = lambda slot, r, data: write(slot, r + 1, data)
    sender = mgr.sender(room)
    if wait_state(sender, 20, (KVPoll.READY, *FINAL)) is KVPoll.READY:
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            sender.send_chunk(chunk, last, AuxData(**aux) if last else None)
    state = wait_state(sender, 20)
    if corrupt_room:
        mgr.aux.write = write
    return {"state": state.name, "reason": sender.failure_reason, "expected": expected}


def _send_many(mgr: KVManager, pool: KVPool, rooms, chunks_per_room, seed):
    """Several rooms at once: every chunk of every room queued before any finishes."""
    results = {}
    senders = {room: mgr.sender(room) for room in rooms}
    for sender in senders.values():
        assert wait_state(sender, 20, (KVPoll.READY, *FINAL)) is KVPoll.READY
    expected = {}
    gen = torch.Generator().manual_seed(seed)
    for k, v in pool.layer_caches:
        for t in (k, v):
            t[1:] = torch.randn(t[1:].shape, generator=gen, dtype=t.dtype)
    for p in range(1, pool.num_pages):
        expected[p] = [t[p].numpy().tobytes() for kv in pool.layer_caches for t in kv]
    for i in range(max(len(c) for c in chunks_per_room)):
        for room, chunks in zip(rooms, chunks_per_room, strict=True):
            if i < len(chunks):
                last = i == len(chunks) - 1
                aux = AuxData(token_id=room % 1000) if last else None
                senders[room].send_chunk(chunks[i], last, aux)
    for room, sender in senders.items():
        results[room] = (wait_state(sender, 20).name, sender.failure_reason)
    return {"results": results, "expected": expected, **mgr.stats()}


def prefill_main(conn, backend: str, shape: dict, env: dict, port: int, options: dict, secret=None):
    pool = make_pool(shape)
    server = BootstrapServer("127.0.0.1", port, secret)
    mgr = KVManager(
        "prefill",
        KVArgs.from_pool(pool, MODEL),
        backend,
        env=DisaggregationEnv(**env),
        bootstrap=server,
        engine_options=options,
        secret=secret,
    )
    conn.send("ready")
    while True:
        cmd, *args = conn.recv()
        if cmd == "send":
            conn.send(_send(mgr, pool, *args))
        elif cmd == "hold":
            room, timeout = args
            sender = mgr.sender(room)
            state = wait_state(sender, timeout)
            time.sleep(0.2)
            conn.send({"state": state.name, "reason": sender.failure_reason, **mgr.stats()})
        elif cmd == "abort":
            (room,) = args
            sender = mgr.sender(room)
            wait_state(sender, 10, (KVPoll.READY, *FINAL))
            sender.abort("prefill gave up")
            state = wait_state(sender, 10)
            conn.send({"state": state.name, "reason": sender.failure_reason, **mgr.stats()})
        elif cmd == "send_many":
            conn.send(_send_many(mgr, pool, *args))
        elif cmd == "stats":
            conn.send(mgr.stats())
        elif cmd == "close":
            mgr.close()
            server.close()
            conn.send("closed")
            return


class PrefillProcess:
    """The spawned prefill; ``call`` sends a command and waits (bounded) for its answer."""

    def __init__(
        self, backend: str, shape=SHAPE, env=ENV, options=None, timeout=60.0, port=0, secret=None
    ):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.timeout = timeout
        args = (child, backend, dict(shape), dict(env), self.port, dict(options or {}), secret)
        self.proc = ctx.Process(target=prefill_main, args=args, daemon=True)
        self.proc.start()
        assert self.recv() == "ready"

    def recv(self):
        if not self.conn.poll(self.timeout):
            raise AssertionError(f"prefill process did not answer within {self.timeout}s")
        return self.conn.recv()

    def post(self, *cmd) -> None:
        self.conn.send(cmd)

    def call(self, *cmd):
        self.post(*cmd)
        return self.recv()

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("close")
            except (AssertionError, EOFError, OSError):
                pass
        self.kill()
