"""Wire an engine into PD disaggregation: its KV manager, bootstrap server and PD queues.

Prefill runs the bootstrap server on ``--disaggregation-bootstrap-port`` and a
prefill ``KVManager``; decode runs a decode ``KVManager`` only. Both register
the engine's KV pool once, so transfers write straight into the pages the
schedulers hand out. Under DP attention every DP leader has its own manager;
on prefill DP rank 0 serves the bootstrap port for all of them (``bootstrap``).
"""

from __future__ import annotations

import os
import socket

from pdcore.config import ServerArgs
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.fake import FAKE_BACKEND
from pdcore.disaggregation.kv_args import KVArgs
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.distributed.state import kv_head_range, node_ip, tp
from pdcore.distributed.wire import leaders_gather_msgs
from pdcore.engine.pd_tp import KVStage, RankReceiver, exchange_rank_endpoints
from pdcore.envs import DisaggregationEnv, disaggregation_secret
from pdcore.model.config import ModelConfig
from pdcore.platform import MemoryKind
from pdcore.sampling_params import MAX_TOP_LOGPROBS
from pdcore.scheduler.decode import DecodeQueues
from pdcore.scheduler.prefill import PrefillQueues

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def model_identity(cfg: ModelConfig) -> str:
    """What both sides must agree on for KV pages to mean the same thing
    (MLA: one latent head of rank + rope dims, marked as such)."""
    kv = cfg.kv_cache_spec()
    mla = f":MLA{kv.latent_rank}" if kv.latent_rank else ""
    return (
        f"{cfg.architecture}:L{cfg.num_hidden_layers}:H{cfg.hidden_size}:"
        f"KV{kv.num_kv_heads}x{kv.head_dim}{mla}:V{cfg.vocab_size}"
    )


def advertised_host(host: str) -> str:
    """The address a peer can reach this process at (a wildcard bind is not one; nor
    is loopback on a node of a multi-node server, whose other nodes must reach it)."""
    if host in LOOPBACK_HOSTS and node_ip() not in LOOPBACK_HOSTS:
        return node_ip()
    if host not in WILDCARD_HOSTS:
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def build_pd_queues(
    args: ServerArgs,
    pool,
    scheduler,
    model_config: ModelConfig,
    memory_kind: MemoryKind = MemoryKind.DRAM,
):
    """The mode's PD queues over ``scheduler``, or None in ``null`` mode.

    ``memory_kind``: where ``pool`` lives (the platform's ``memory_kind``); the
    KV manager registers the pool with the transfer engine as that kind.

    Under TP every rank calls this (it exchanges endpoints collectively); only
    the leader gets queues, the others get their ``FollowerPD`` part.
    """
    mode = args.disaggregation_mode
    if mode == "null":
        return None
    info = tp()
    attn = info.attn  # one engine per attention group (the TP group without DP attention)
    kv = model_config.kv_cache_spec()
    first = kv_head_range(kv.num_kv_heads, attn.rank, attn.size)[0]
    kv_args = KVArgs.from_pool(
        pool,
        model_identity(model_config),
        attn.rank,
        attn.size,
        kv.num_kv_heads,
        first,
        memory_kind=memory_kind,
    )
    options = dict(
        hostname=advertised_host(args.host),
        ib_device=args.disaggregation_ib_device,
        aux_slots=scheduler.config.max_running_requests,
        aux_top_k=MAX_TOP_LOGPROBS,
        secret=args.disaggregation_secret or disaggregation_secret(),
    )
    backend = args.disaggregation_transfer_backend
    if backend == FAKE_BACKEND:  # warm-up/testing only: no KV manager, no bootstrap server
        if not info.is_leader:
            return None
        return DecodeQueues(scheduler, None) if mode == "decode" else PrefillQueues(scheduler, None)
    options["engine_options"] = transfer_options(args)
    receiver = None
    if mode == "decode" and not info.is_leader:
        receiver = RankReceiver(
            kv_args, backend, options["hostname"], options["ib_device"], options["engine_options"]
        )
    ranks = exchange_rank_endpoints(receiver)
    if not info.is_leader:
        return FollowerPD(receiver, KVStage(pool, kv.num_kv_heads) if mode == "prefill" else None)
    if mode == "decode":
        return DecodeQueues(
            scheduler,
            KVManager("decode", kv_args, backend, ranks=ranks, **options),
            args.local_prefill_threshold,
        )
    server = _bootstrap_server(args, options["secret"])
    try:
        manager = KVManager(
            "prefill",
            kv_args,
            backend,
            bootstrap=server,
            staging_bytes=staging_bytes(args, pool),
            **options,
        )
        if info.dp_size > 1:
            _link_dp_bootstrap(server)
    except BaseException:
        server.close()
        raise
    return PrefillQueues(scheduler, manager, closers=[server])


def transfer_options(args: ServerArgs) -> dict:
    """``TransferConfig.options`` of this server's transfer engines: the keys pdcore
    fills (``transfer_timeout_s`` from ``PDCORE_``/``SGLANG_DISAGGREGATION_WRITE_TIMEOUT``),
    then the options of the plugin providing the backend (its own flags)."""
    from pdcore.registry import get_registry

    own = {"transfer_timeout_s": DisaggregationEnv.from_env().write_timeout}
    plugin = get_registry().options_for(
        "transfer", args.disaggregation_transfer_backend, args.plugin_options
    )
    return {**own, **plugin}


def _bootstrap_server(args: ServerArgs, secret) -> BootstrapServer:
    """The public bootstrap server, or (DP ranks > 0) a private one that DP rank 0's
    forwards to, on the address DP rank 0's node reaches this one at."""
    if tp().dp_rank == 0:
        return BootstrapServer(args.host, args.disaggregation_bootstrap_port, secret)
    return BootstrapServer(node_ip(), 0, secret)


def _link_dp_bootstrap(server: BootstrapServer) -> None:
    """Every prefill DP leader calls this once: rank 0 learns the others' servers."""
    mine = None if tp().dp_rank == 0 else f"{node_ip()}:{server.port}"
    addrs = leaders_gather_msgs(mine, str | None, "bootstrap address of a DP leader")
    if tp().dp_rank == 0:
        server.forward_to(addrs[1:])


def staging_bytes(args: ServerArgs, pool) -> int:
    """Room for two chunks of every head (``PDCORE_DISAGGREGATION_STAGING_MB`` overrides)."""
    mb = os.environ.get("PDCORE_DISAGGREGATION_STAGING_MB")
    if mb:
        return int(float(mb) * 2**20)
    chunk_pages = -(-args.chunked_prefill_size // pool.page_size) + 1
    return 2 * chunk_pages * pool.shape.bytes_per_page * max(1, tp().attn_size)


class FollowerPD:
    """A non-leader rank's PD part: a decode ``RankReceiver`` or a prefill ``KVStage``."""

    def __init__(self, receiver: RankReceiver | None, stage: KVStage | None):
        self.receiver = receiver
        self.stage = stage

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
