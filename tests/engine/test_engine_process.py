"""The engine process over real ZMQ ipc sockets, with the tiny model injected."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time

import pytest
import zmq
from engine.reference import greedy_reference
from engine.tiny_model import EOS, load_tiny

from pdcore.config import ServerArgs
from pdcore.engine.engine_process import run_engine
from pdcore.engine.io_struct import (
    AbortReq,
    EngineError,
    EngineStats,
    FlushCacheReq,
    GenerateReq,
    StatsReq,
    TokenOut,
    decode_from_engine,
    encode,
)

FACTORY = "engine.tiny_model:load_tiny"


class FrontEnd:
    """What the HTTP server does: bind PUSH/PULL, spawn the engine, wait for ready."""

    def __init__(self, model_factory=FACTORY, **server_args):
        self.dir = tempfile.mkdtemp(prefix="pdc-")  # ipc paths must stay short
        self.in_addr = f"ipc://{self.dir}/in"
        self.out_addr = f"ipc://{self.dir}/out"
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.pull = self.ctx.socket(zmq.PULL)
        self.push.bind(self.in_addr)
        self.pull.bind(self.out_addr)
        args = dict(max_total_tokens=256, page_size=4, chunked_prefill_size=16, device="cpu")
        args.update(server_args)
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe(duplex=False)
        self.proc = spawn.Process(
            target=run_engine,
            args=(vars(ServerArgs(**args)), self.in_addr, self.out_addr, child, model_factory),
        )
        self.proc.start()
        child.close()
        assert parent.poll(120), "engine process did not report"
        self.status, self.info = parent.recv()

    def send(self, msg) -> None:
        self.push.send(encode(msg))

    def recv(self, timeout_s: float = 30.0) -> list:
        assert self.pull.poll(int(timeout_s * 1000)), "no output from the engine"
        return decode_from_engine(self.pull.recv())

    def close(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.join(30)
        for sock in (self.push, self.pull):
            sock.close(linger=0)
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def front_end():
    fe = FrontEnd()
    yield fe
    fe.close()


def test_generate_abort_stats_and_flush_over_zmq(front_end):
    fe = front_end
    assert fe.status == "ready", fe.info
    assert fe.info["page_size"] == 4 and fe.info["total_pages"] == 64
    assert fe.info["vocab_size"] == 128 and fe.info["dtype"] == "float64"

    fe.send(StatsReq(token=7))
    [stats] = fe.recv()
    assert isinstance(stats, EngineStats) and stats.token == 7 and stats.free_pages == 64

    prompts = {"a": list(range(2, 40)), "b": [9, 8, 7, 6, 5]}
    for rid, prompt in prompts.items():
        fe.send(GenerateReq(rid, prompt, {"temperature": 0, "max_new_tokens": 8}))
    fe.send(GenerateReq("long", [3, 4, 5], {"max_new_tokens": 200, "ignore_eos": True}))
    fe.send(GenerateReq("bad", [3], {"temperature": -2}))
    tokens = {rid: [] for rid in [*prompts, "long"]}
    finals, errors = {}, {}
    aborted_sent = False
    deadline = time.monotonic() + 60
    while len(finals) < 3 and time.monotonic() < deadline:
        for out in fe.recv():
            if isinstance(out, EngineError):
                errors[out.rid] = out
                continue
            assert isinstance(out, TokenOut)
            tokens[out.rid].extend(out.token_ids)
            if out.finish_reason:
                finals[out.rid] = out
        if not aborted_sent and len(tokens["long"]) >= 2:
            fe.send(AbortReq("long"))
            fe.send(AbortReq("long"))  # idempotent
            fe.send(AbortReq("unknown"))
            aborted_sent = True
    assert "temperature" in errors["bad"].message
    model = load_tiny().model
    for rid, prompt in prompts.items():
        assert tokens[rid] == greedy_reference(model, prompt, 8, (EOS,)), rid
        assert finals[rid].prompt_tokens == len(prompt)
    assert finals["long"].finish_reason["type"] == "abort"
    assert len(tokens["long"]) < 200

    fe.send(FlushCacheReq())
    [flushed] = fe.recv()
    assert flushed.flushed and flushed.free_pages == flushed.total_pages == 64
    assert flushed.num_running == flushed.num_waiting == 0

    os.kill(fe.proc.pid, signal.SIGTERM)
    fe.proc.join(30)
    assert fe.proc.exitcode == 0


def test_startup_failure_is_reported():
    fe = FrontEnd(model_factory="engine.tiny_model:no_such_factory")
    try:
        assert fe.status == "error"
        assert "no_such_factory" in fe.info
        fe.proc.join(30)
        assert fe.proc.exitcode == 1
    finally:
        fe.close()
