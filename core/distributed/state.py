"""The engine's tensor-parallel group: who am I, how many are we, and collectives.

One engine process per TP rank. Rank 0 (the leader) owns the scheduler, the
sampler and the PD control plane; every rank holds a shard of the weights and
of the KV heads. Collectives are no-ops at TP=1, so model code calls them
unconditionally. ``torch.distributed`` picks the platform's backend: gloo on
CPU, NCCL on CUDA, HCCL on Ascend.

DP attention (``--dp-size N --enable-dp-attention``) cuts the T ranks into N
attention groups of A = T / N consecutive ranks. Each attention group is one
engine (its rank 0 leads: scheduler, sampler, PD) with its own requests and
KV pool, its attention heads and vocabulary split over its A ranks; dense MLP
and MoE layers still split over all T ranks. Without it the attention group
is the whole TP group, so engine-level code always works on ``attn``.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import torch

logger = logging.getLogger(__name__)

INIT_TIMEOUT_S = 120
_NODE_IP = "127.0.0.1"  # where other nodes reach this process (see node_ip)


def node_ip() -> str:
    """The address other nodes of this server reach this process at: the local
    address of the route to the rendezvous host (loopback on a single node)."""
    return _NODE_IP


def ip_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


@dataclass(frozen=True)
class Group:
    """Consecutive ranks that split a layer: my rank in it, its size, its process
    groups (tensors; gloo for messages, ``wire``) and the global rank of its rank 0."""

    rank: int = 0
    size: int = 1
    group: object = None
    cpu_group: object = None
    first: int = 0


@dataclass(frozen=True)
class TPInfo:
    rank: int = 0
    size: int = 1
    group: object = None  # torch.distributed ProcessGroup for tensors (None at TP=1)
    cpu_group: object = None  # gloo group for messages (step plans; see ``wire``)
    # This rank's attention group (DP attention; else the same as the TP group).
    attn_rank: int = 0
    attn_size: int = 1
    attn_group: object = None
    attn_cpu_group: object = None
    dp_rank: int = 0
    dp_size: int = 1
    leaders_group: object = None  # gloo group of the DP leaders (set on leaders only)

    @property
    def is_leader(self) -> bool:
        """Leads its engine: rank 0 of its attention group (of the TP group without DP)."""
        return self.attn_rank == 0

    @property
    def full(self) -> Group:
        return Group(self.rank, self.size, self.group, self.cpu_group, 0)

    @property
    def attn(self) -> Group:
        first = self.rank - self.attn_rank
        return Group(self.attn_rank, self.attn_size, self.attn_group, self.attn_cpu_group, first)


_TP = TPInfo()
# The key that seals messages between ranks (``handshake``; None without a secret).
# Set once by ``init_tp`` before any message is sent, cleared by ``destroy_tp``.
_SESSION_KEY: bytes | None = None


def tp() -> TPInfo:
    """The current process's TP group (rank 0 of 1 unless ``init_tp`` ran)."""
    return _TP


def set_tp(info: TPInfo) -> None:
    global _TP
    _TP = info


def session_key() -> bytes | None:
    """The key that seals this server's messages between ranks (None: no secret)."""
    return _SESSION_KEY


def init_tp(
    backend: str,
    init_method: str,
    rank: int,
    size: int,
    dp_size: int = 1,
    secret: str | bytes | None = None,
) -> TPInfo:
    """Join the TP group (blocks until all ``size`` ranks joined or the timeout);
    ``dp_size`` > 1: DP attention over ``dp_size`` attention groups. With a
    ``secret`` (``--disaggregation-secret``) every rank must prove it holds the
    same one before anything else is exchanged, else ``AuthError`` on every rank."""
    import torch.distributed as dist

    from pdcore.distributed.handshake import authenticate_group

    global _NODE_IP, _SESSION_KEY

    if size == 1:
        set_tp(TPInfo())
        return _TP
    if size % dp_size:
        raise ValueError(f"--dp-size {dp_size} must divide --tp-size {size}")
    _NODE_IP = ip_towards(urlsplit(init_method).hostname or "127.0.0.1")
    timeout = timedelta(seconds=INIT_TIMEOUT_S)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=size, timeout=timeout
    )
    group = dist.group.WORLD
    cpu_group = group if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    try:
        _SESSION_KEY = authenticate_group(secret, rank, size, cpu_group)
    except BaseException:
        dist.destroy_process_group()
        raise
    if dp_size == 1:
        info = TPInfo(rank, size, group, cpu_group, rank, size, group, cpu_group)
    else:
        info = _dp_attention_groups(TPInfo(rank, size, group, cpu_group), backend, dp_size, timeout)
    set_tp(info)
    logger.info(
        "joined TP group: rank %d of %d (%s), DP rank %d of %d", rank, size, backend,
        info.dp_rank, info.dp_size,
    )  # fmt: skip
    return _TP


def _dp_attention_groups(world: TPInfo, backend: str, dp_size: int, timeout) -> TPInfo:
    """``world`` with its attention group and the DP leaders' group. Every rank
    creates every group, in the same order (``new_group`` is collective)."""
    import torch.distributed as dist

    attn_size = world.size // dp_size
    dp_rank = world.rank // attn_size
    attn_group = attn_cpu_group = None
    if attn_size > 1:
        for d in range(dp_size):
            ranks = list(range(d * attn_size, (d + 1) * attn_size))
            g = dist.new_group(ranks, timeout=timeout)
            c = g if backend == "gloo" else dist.new_group(ranks, backend="gloo", timeout=timeout)
            if d == dp_rank:
                attn_group, attn_cpu_group = g, c
    leader_ranks = [d * attn_size for d in range(dp_size)]
    leaders = dist.new_group(leader_ranks, backend="gloo", timeout=timeout)
    attn_rank = world.rank % attn_size
    return dataclasses.replace(
        world, attn_rank=attn_rank, attn_size=attn_size, attn_group=attn_group,
        attn_cpu_group=attn_cpu_group, dp_rank=dp_rank, dp_size=dp_size,
        leaders_group=leaders if attn_rank == 0 else None,
    )  # fmt: skip


def destroy_tp() -> None:
    import torch.distributed as dist

    global _SESSION_KEY
    _SESSION_KEY = None

    if _TP.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    set_tp(TPInfo())


def all_reduce(x: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """Sum over ``group``'s ranks (default: the TP group), in place; returns ``x``.

    An empty ``x`` is skipped: every rank of the group holds the same shape, so
    all skip alike (an idle DP group's zero tokens)."""
    size, pg = (_TP.size, _TP.group) if group is None else (group.size, group.group)
    if size > 1 and x.numel():
        import torch.distributed as dist

        dist.all_reduce(x, group=pg)
    return x


def all_gather_last(x: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along the last dim (rank order; default: TP group)."""
    size, pg = (_TP.size, _TP.group) if group is None else (group.size, group.group)
    if size == 1:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=pg)
    return torch.cat(parts, dim=-1)


# Engine-level collectives run over the attention group: one engine per group
# (the whole TP group without DP attention). Messages (step plans, PD endpoints)
# go through ``wire``: typed bytes, never pickled objects.


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` any rank of this engine holds (KV page counts must agree)."""
    if _TP.attn_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_TP.attn_cpu_group)
    return int(t.item())


# DP leaders only (one per attention group), over their gloo group.


def leaders_gather(values: list[int]) -> list[list[int]]:
    """Every DP leader's ``values`` (the same length on all), in DP rank order."""
    if _TP.dp_size == 1:
        return [list(values)]
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.int64)
    parts = [torch.empty_like(mine) for _ in range(_TP.dp_size)]
    dist.all_gather(parts, mine, group=_TP.leaders_group)
    return [p.tolist() for p in parts]


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """``(start, count)`` of rank's equal share of ``total`` items (must divide)."""
    if total % size:
        raise ValueError(f"{total} does not split evenly over {size} tensor-parallel ranks")
    count = total // size
    return rank * count, count


def kv_head_range(num_kv_heads: int, rank: int, size: int) -> tuple[int, int]:
    """``(first head, count)`` of the KV heads TP rank ``rank`` holds.

    TP <= heads: an equal split. TP > heads: each rank holds one head, each head
    replicated on ``size // num_kv_heads`` consecutive ranks.
    """
    if size <= num_kv_heads:
        return shard_range(num_kv_heads, rank, size)
    if size % num_kv_heads:
        raise ValueError(
            f"--tp-size {size} must be a multiple of the model's {num_kv_heads} KV heads"
        )
    return rank * num_kv_heads // size, 1
