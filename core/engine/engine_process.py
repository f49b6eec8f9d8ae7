"""The engine process: loads the model, then serves the front end over ZMQ.

Start it with ``multiprocessing`` (spawn) as ``run_engine(server_args_dict,
in_addr, out_addr, ready_conn)``. The front end binds both addresses (PUSH on
``in_addr``, PULL on ``out_addr``); the engine connects, so either side may
start first. Messages in: ``GenerateReq``, ``AbortReq``, ``StatsReq``,
``FlushCacheReq``, ``StartProfileReq``, ``StopProfileReq`` (msgpack, one per ZMQ
message). Out: one msgpack list of ``TokenOut`` / ``EngineError`` / ``EngineStats``
/ ``ProfileReply`` per message. Stats, flush and profile requests are answered at
once, between steps (the torch profiler runs here, beside the model: ``profiler``).
Startup reports ``("ready", info)`` or ``("error", message)`` on ``ready_conn``.
The process exits on SIGTERM/SIGINT, or by itself once its parent is gone.
Under DP attention each DP group's leader is such a process, with its own
``in_addr`` (all share ``out_addr``), serving in lockstep (``dp_lockstep``).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import traceback

from pdcore.engine.io_struct import (
    AbortReq,
    EngineError,
    FlushCacheReq,
    GenerateReq,
    ProfileReply,
    StartProfileReq,
    StatsReq,
    StopProfileReq,
    decode_to_engine,
    encode,
)

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 50
# Waiting only on PD peers: the KV manager wakes the loop on every room change
# (a socket pair), so this is only a safety net. A 2 ms poll here cost the decode
# engine ~9% of a core while prefill computed on the same two cores.
PD_POLL_MS = 50


def run_engine(
    server_args_dict: dict,
    in_addr: str,
    out_addr: str,
    ready_conn,
    model_factory: str | None = None,
    tp_rank: int = 0,
    dist_init_method: str | None = None,
) -> None:
    """Process entry point; returns when SIGTERM (or SIGINT) arrives.

    ``model_factory``: optional ``"module:function"`` called as
    ``function(server_args, device)`` and returning an object with ``.model``
    and ``.config`` like ``pdcore.model.loader.load_model`` (tests inject a
    tiny model this way). Under ``--tp-size`` > 1 one process runs per rank:
    rank 0 talks to the front end and leads; the others (``tp_rank`` > 0,
    ``in_addr``/``out_addr`` unused) run each forward the leader broadcasts.
    Under DP attention every attention group's rank 0 leads its own engine.
    """
    stop = {"flag": False}

    def request_stop(signum, frame):
        stop["flag"] = True

    leads = tp_rank % _attn_tp_size(server_args_dict) == 0
    if leads:  # followers keep the default: SIGTERM ends them even mid-collective
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    try:
        engine = _build_engine(server_args_dict, model_factory, tp_rank, dist_init_method)
    except Exception as e:
        logger.exception("engine startup failed")
        ready_conn.send(("error", f"{type(e).__name__}: {e}"))
        ready_conn.close()
        raise SystemExit(1) from None
    if not leads:
        _follow(engine, ready_conn)
        return
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.setsockopt(zmq.LINGER, 0)
    pull.connect(in_addr)
    push.connect(out_addr)
    ready_conn.send(("ready", {**engine.info(), "pid": os.getpid()}))
    ready_conn.close()
    try:
        _serve(engine, pull, push, stop)
    finally:
        engine.close()
        _stop_followers(engine)
        pull.close()
        push.close()
        ctx.term()
        logger.info("engine process stopped")


def _follow(engine, ready_conn) -> None:
    """A follower rank: run the leader's forwards until it says stop (or dies)."""
    from pdcore.distributed.wire import WireError

    ready_conn.send(("ready", {"pid": os.getpid(), "tp_rank": engine.tp.rank}))
    ready_conn.close()
    try:
        while engine.runner.follow():
            pass
    except WireError as e:  # a bad message: never run a forward the leader did not send
        logger.error("TP rank %d stops: %s", engine.tp.rank, e)
    except Exception as e:  # the leader is gone: its sockets closed under the collective
        logger.warning("TP rank %d stops: %s", engine.tp.rank, e)
    finally:
        engine.close()
        logger.info("TP rank %d stopped", engine.tp.rank)


def _attn_tp_size(server_args_dict: dict) -> int:
    """Ranks per engine: the TP size, or one DP group's share under DP attention."""
    from pdcore.config import ServerArgs

    args = ServerArgs(**server_args_dict)
    return args.tp_size // args.dp_attention_groups


def _stop_followers(engine) -> None:
    from pdcore.distributed.state import destroy_tp

    if engine.tp.attn_size > 1:
        try:
            engine.runner.stop_followers()
        except Exception as e:
            logger.warning("could not tell TP followers to stop: %s", e)
    if engine.tp.size > 1:
        destroy_tp()


def configured_platform(args):
    """This process's platform, handed its plugin's options (every engine process and
    TP rank calls this before touching the device)."""
    from pdcore.registry import get_registry

    registry = get_registry()
    platform = registry.select_platform(args.device)
    platform.configure(registry.options_for("platform", platform.name, args.plugin_options))
    return platform


def _build_engine(
    server_args_dict: dict,
    model_factory: str | None,
    tp_rank: int = 0,
    dist_init_method: str | None = None,
):
    import torch

    from pdcore.config import ServerArgs
    from pdcore.distributed.state import init_tp
    from pdcore.engine.engine import Engine

    args = ServerArgs(**server_args_dict)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s engine[tp{tp_rank}] %(levelname)s %(message)s",
    )
    torch.manual_seed(args.random_seed)
    platform = configured_platform(args)
    local_rank = tp_rank % (args.tp_size // args.nnodes)
    gpu_id = args.base_gpu_id + local_rank * args.gpu_id_step
    platform.set_device(gpu_id)
    device = platform.torch_device(gpu_id)
    if args.tp_size > 1:
        if platform.device_type == "cpu":  # ranks share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (args.tp_size // args.nnodes)))
        backend = platform.dist_backend or "gloo"
        from pdcore.envs import disaggregation_secret

        secret = args.disaggregation_secret or disaggregation_secret()
        init_tp(backend, dist_init_method, tp_rank, args.tp_size, args.dp_attention_groups, secret)
    if model_factory:
        module, _, func = model_factory.partition(":")
        loaded = getattr(importlib.import_module(module), func)(args, device)
    else:
        from pdcore.model.loader import load_model

        dtype_name = platform.default_dtype() if args.dtype == "auto" else args.dtype
        loaded = load_model(
            args.model_path,
            getattr(torch, dtype_name),
            device,
            load_tokenizer=False,
            load_format=args.load_format,
        )
    loaded.model.eval()
    return Engine(loaded.model, loaded.config, args, args.attention_backend, device)


def _drain_wakeups(sock) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _serve(engine, pull, push, stop) -> None:
    import zmq

    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    poller.register(wake_r, zmq.POLLIN)

    def wake() -> None:
        try:
            wake_w.send(b"!")
        except (BlockingIOError, OSError):  # already pending, or shutting down
            pass

    engine.set_pd_wakeup(wake)
    from pdcore.engine.profiler import EngineProfiler  # torch: not in the front end

    profiler = EngineProfiler(engine.server_args.disaggregation_mode, engine.platform)
    try:
        if engine.tp.dp_size > 1:
            _serve_lockstep(engine, pull, push, stop, poller, wake_r, profiler)
        else:
            _loop(engine, pull, push, stop, poller, wake_r, profiler)
    finally:
        profiler.close()


def _serve_lockstep(engine, pull, push, stop, poller, wake_r, profiler) -> None:
    """A DP leader: serve in lockstep with the other DP leaders (``dp_lockstep``)."""
    import zmq

    from pdcore.engine.dp_lockstep import LeaderWake, lockstep_loop

    wake = LeaderWake()
    poller.register(wake, zmq.POLLIN)

    def drain() -> None:
        _drain_wakeups(wake_r)
        _drain(engine, pull, push, profiler)

    try:
        lockstep_loop(engine, push, stop, poller.poll, drain, wake, profiler)
    finally:
        wake.close()


def _loop(engine, pull, push, stop, poller, wake_r, profiler) -> None:
    parent = os.getppid()
    while not stop["flag"]:
        if os.getppid() != parent:  # the front end died without stopping us
            logger.warning("parent process is gone; engine exiting")
            return
        if not engine.has_work():
            if not poller.poll(IDLE_POLL_MS):
                continue
        elif not engine.has_compute():
            poller.poll(PD_POLL_MS)
        _drain_wakeups(wake_r)
        _drain(engine, pull, push, profiler)
        if not engine.has_work():
            continue
        computes = engine.has_compute()  # a model step, not only PD bookkeeping
        try:
            with profiler.step_scope():
                outs = engine.step()
        except Exception as e:
            logger.error("engine step failed:\n%s", traceback.format_exc())
            outs = engine.fail_all(f"internal engine error: {type(e).__name__}: {e}")
        if outs:
            push.send(encode(outs))
        if computes:
            profiler.after_step()


def _drain(engine, pull, push, profiler) -> None:
    """Handle every message already queued, without blocking."""
    import zmq

    while True:
        try:
            data = pull.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            msg = decode_to_engine(data)
        except Exception as e:
            logger.warning("dropping undecodable message: %s", e)
            continue
        try:
            _handle(engine, msg, push, profiler)
        except Exception as e:  # one bad message must not take the engine down
            logger.error("failed to handle %s:\n%s", type(msg).__name__, traceback.format_exc())
            if isinstance(msg, GenerateReq):
                push.send(encode([EngineError(msg.rid, f"{type(e).__name__}: {e}", 500)]))
            elif isinstance(msg, StartProfileReq | StopProfileReq):  # its caller waits
                reply = ProfileReply(msg.token, False, f"{type(e).__name__}: {e}", status=500)
                push.send(encode([reply]))


def _handle(engine, msg, push, profiler) -> None:
    if isinstance(msg, GenerateReq):
        engine.add_request(msg)
    elif isinstance(msg, AbortReq):
        engine.abort(msg.rid)
    elif isinstance(msg, StatsReq):
        push.send(encode([engine.stats(msg.token)]))
    elif isinstance(msg, FlushCacheReq):
        flushed = engine.flush_cache()
        push.send(encode([engine.stats(flushed=flushed)]))
    elif isinstance(msg, StartProfileReq):
        push.send(encode([profiler.start(msg)]))
    elif isinstance(msg, StopProfileReq):
        push.send(encode([profiler.stop(msg.token)]))
