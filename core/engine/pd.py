"""Wire an engine into PD disaggregation: its KV manager, bootstrap server and PD queues.

Prefill runs the bootstrap server on ``--disaggregation-bootstrap-port`` and a
prefill ``KVManager``; decode runs a decode ``KVManager`` only. Both register
the engine's KV pool once, so transfers write straight into the pages the
schedulers hand out.
"""

from __future__ import annotations

import socket

from pdcore.config import ServerArgs
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.fake import FAKE_BACKEND
from pdcore.disaggregation.kv_args import KVArgs
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.envs import disaggregation_secret
from pdcore.model.config import ModelConfig
from pdcore.sampling_params import MAX_TOP_LOGPROBS
from pdcore.scheduler.decode import DecodeQueues
from pdcore.scheduler.prefill import PrefillQueues

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def model_identity(cfg: ModelConfig) -> str:
    """What both sides must agree on for KV pages to mean the same thing."""
    return (
        f"{cfg.architecture}:L{cfg.num_hidden_layers}:H{cfg.hidden_size}:"
        f"KV{cfg.num_key_value_heads}x{cfg.head_dim}:V{cfg.vocab_size}"
    )


def advertised_host(host: str) -> str:
    """The address a peer can reach this process at (a wildcard bind is not one)."""
    if host not in WILDCARD_HOSTS:
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def build_pd_queues(args: ServerArgs, pool, scheduler, model_config: ModelConfig):
    """The mode's PD queues over ``scheduler``, or None in ``null`` mode."""
    mode = args.disaggregation_mode
    if mode == "null":
        return None
    kv_args = KVArgs.from_pool(pool, model_identity(model_config))
    options = dict(
        hostname=advertised_host(args.host),
        ib_device=args.disaggregation_ib_device,
        aux_slots=scheduler.config.max_running_requests,
        aux_top_k=MAX_TOP_LOGPROBS,
        secret=args.disaggregation_secret or disaggregation_secret(),
    )
    backend = args.disaggregation_transfer_backend
    if backend == FAKE_BACKEND:  # warm-up/testing only: no KV manager, no bootstrap server
        return DecodeQueues(scheduler, None) if mode == "decode" else PrefillQueues(scheduler, None)
    if mode == "decode":
        return DecodeQueues(scheduler, KVManager("decode", kv_args, backend, **options))
    server = BootstrapServer(args.host, args.disaggregation_bootstrap_port, options["secret"])
    try:
        manager = KVManager("prefill", kv_args, backend, bootstrap=server, **options)
    except BaseException:
        server.close()
        raise
    return PrefillQueues(scheduler, manager, closers=[server])
