"""``serve(server_args)``: engine process + HTTP front end, started and stopped together.

The engine runs in a ``spawn`` child (CUDA-safe) and talks ZMQ over ipc sockets
in a private temp dir. The tokenizer loads in this process while the engine
loads the model. SIGINT/SIGTERM stop uvicorn gracefully; the engine is then
terminated (killed if it lingers) and the temp dir removed, on every exit path.
Under DP attention every DP leader gets its own input socket.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable

import uvicorn

from pdcore.config import ServerArgs, masked
from pdcore.errors import ConfigError, PdcoreError
from pdcore.listen import listen_socket
from pdcore.registry import get_registry
from pdcore.server.engine_group import EngineGroup, EngineStartError
from pdcore.server.http_server import create_app
from pdcore.server.ports import check_engine_ports
from pdcore.server.startup_notes import log_flag_notes, log_plugin_notes
from pdcore.server.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)
__all__ = ["EngineStartError", "serve"]


class _Terminated(Exception):
    """SIGTERM arrived outside uvicorn's own handling (startup, or re-raised after it)."""


def load_tokenizer(server_args: ServerArgs):
    """The model's tokenizer (``--tokenizer-path`` or the model's own), with its eos ids;
    under ``--skip-tokenizer-init`` none, only the vocabulary size from the config."""
    from pdcore.model.loader import load_model_config, resolve_model_path
    from pdcore.model.tokenizer import Tokenizer
    from pdcore.server.no_tokenizer import NoTokenizer

    config = load_model_config(server_args.model_path)
    if server_args.skip_tokenizer_init:
        return NoTokenizer(config.vocab_size, config.eos_token_ids)
    path = server_args.tokenizer_path or resolve_model_path(server_args.model_path)
    try:
        return Tokenizer.from_pretrained(path, eos_token_ids=config.eos_token_ids)
    except Exception as e:
        raise PdcoreError(f"cannot load the tokenizer from {path}: {e}") from e


def _default_engine_target() -> Callable:
    from pdcore.engine.engine_process import run_engine

    return run_engine


def _bind_http(server_args: ServerArgs) -> socket.socket:
    """Take the HTTP port before the model loads, so a busy port fails in a second."""
    return listen_socket(server_args.host, server_args.port, "--port")


def serve(
    server_args: ServerArgs,
    *,
    server_info: dict | None = None,
    engine_target: Callable | None = None,
    tokenizer=None,
) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit status.

    ``server_info``: resolved args for ``/get_server_info``; ``engine_target`` and
    ``tokenizer`` replace the real engine entry point and tokenizer (tests).
    """
    logging.basicConfig(
        level=server_args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log_flag_notes(server_args)
    log_plugin_notes(get_registry())
    ipc_dir = tempfile.mkdtemp(prefix="pdcore-ipc-")  # mode 0700
    try:
        in_addr, out_addr = engine_addrs(server_args, ipc_dir)
        check_engine_ports(server_args)
        http_socket = _bind_http(server_args)
    except ConfigError as e:
        shutil.rmtree(ipc_dir, ignore_errors=True)
        print(f"pdcore: error: {e}", file=sys.stderr, flush=True)
        return 1
    group = EngineGroup(server_args, engine_target or _default_engine_target(), in_addr, out_addr)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        ranks = f", TP ranks {group.ranks[0]}-{group.ranks[-1]}" if server_args.tp_size > 1 else ""
        _say(f"starting the engine process ({server_args.model_path or 'embedded model'}{ranks})")
        group.start()
        # while the engine loads the model:
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(server_args)
        server_info = dict(server_info) if server_info else _resolved(server_args)
        info = group.wait_ready(_say)
        server_info["engine_info"] = info
        context = info.get("context_length") or server_args.context_length
        if not context:
            raise EngineStartError("the engine did not report its context length")
        tm = TokenizerManager(
            tokenizer,
            in_addr,
            out_addr,
            context_length=int(context),
            server_args=server_args,
            engine_alive=group.is_alive,
        )
        app = create_app(tm, server_info=server_info, warmup=not server_args.skip_server_warmup)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=server_args.host,
                port=server_args.port,
                log_level=server_args.log_level,
                timeout_graceful_shutdown=5,
            )
        )
        _say(f"engine ready; serving on http://{server_args.host}:{server_args.port}")
        server.run(sockets=[http_socket])
        return 0 if server.started else 1
    except PdcoreError as e:
        print(f"pdcore: error: {e}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, _Terminated):
        _say("shutting down")
        return 0
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind the port
        return e.code if isinstance(e.code, int) else 1
    finally:
        group.stop()
        http_socket.close()
        shutil.rmtree(ipc_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def serve_follower_node(server_args: ServerArgs, engine_target: Callable | None = None) -> int:
    """``--node-rank`` > 0: this node's TP ranks only (no HTTP, no tokenizer), until
    SIGINT/SIGTERM or until a rank exits (the leader on node 0 stopped)."""
    logging.basicConfig(
        level=server_args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log_plugin_notes(get_registry())
    stop = {"flag": False}

    def request_stop(signum, frame):
        stop["flag"] = True

    try:  # DP leaders here talk to node 0's front end over TCP; other ranks need none
        in_addr, out_addr = engine_addrs(server_args, "")
    except ConfigError as e:
        print(f"pdcore: error: {e}", file=sys.stderr, flush=True)
        return 1
    previous = signal.signal(signal.SIGTERM, request_stop)
    target = engine_target or _default_engine_target()
    group = EngineGroup(server_args, target, in_addr, out_addr)
    try:
        _say(
            f"node {server_args.node_rank}: starting TP ranks "
            f"{group.ranks[0]}-{group.ranks[-1]}; node 0 serves HTTP"
        )
        group.start()
        group.wait_ready(_say)
        _say(f"node {server_args.node_rank}: TP ranks ready")
        return group.wait(lambda: stop["flag"])
    except PdcoreError as e:
        print(f"pdcore: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        group.stop()
        signal.signal(signal.SIGTERM, previous)


def engine_addrs(server_args: ServerArgs, ipc_dir: str) -> tuple[str | list[str], str]:
    """``(input(s), output)`` of the front end's engine sockets: one input per DP
    leader under DP attention. Local ipc sockets, unless DP leaders run on other
    nodes: then TCP on node 0's ``--dist-init-addr`` host, ports PORT+1 .. PORT+N
    (inputs) and PORT+N+1 (output), which every node computes alike."""
    groups = server_args.dp_attention_groups
    if groups > 1 and server_args.nnodes > 1:
        host, port = server_args.dist_init_addr.rsplit(":", 1)
        ip = _resolve(host.strip("[]"))
        ins = [f"tcp://{ip}:{int(port) + 1 + d}" for d in range(groups)]
        return ins, f"tcp://{ip}:{int(port) + 1 + groups}"
    out_addr = f"ipc://{ipc_dir}/engine-out"
    if groups == 1:
        return f"ipc://{ipc_dir}/engine-in", out_addr
    return [f"ipc://{ipc_dir}/engine-in-{d}" for d in range(groups)], out_addr


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise ConfigError("--dist-init-addr", f"cannot resolve {host!r}: {e}") from None


def _resolved(server_args: ServerArgs) -> dict:
    """The effective config (device, backend); plain args if plugins cannot say."""
    try:
        return server_args.resolved(get_registry())
    except Exception:
        return masked(dataclasses.asdict(server_args))


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _say(message: str) -> None:
    print(f"pdcore: {message}", flush=True)
