"""The engine's tensor-parallel group: who am I, how many are we, and collectives.

One engine process per TP rank. Rank 0 (the leader) owns the scheduler, the
sampler and the PD control plane; every rank holds a shard of the weights and
of the KV heads. Collectives are no-ops at TP=1, so model code calls them
unconditionally. ``torch.distributed`` picks the platform's backend: gloo on
CPU, NCCL on CUDA, HCCL on Ascend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch

logger = logging.getLogger(__name__)

INIT_TIMEOUT_S = 120


@dataclass(frozen=True)
class TPInfo:
    rank: int = 0
    size: int = 1
    group: object = None  # torch.distributed ProcessGroup for tensors (None at TP=1)
    cpu_group: object = None  # gloo group for Python objects (step plans)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


_TP = TPInfo()


def tp() -> TPInfo:
    """The current process's TP group (rank 0 of 1 unless ``init_tp`` ran)."""
    return _TP


def set_tp(info: TPInfo) -> None:
    global _TP
    _TP = info


def init_tp(backend: str, init_method: str, rank: int, size: int) -> TPInfo:
    """Join the TP group (blocks until all ``size`` ranks joined or the timeout)."""
    import torch.distributed as dist

    if size == 1:
        set_tp(TPInfo())
        return _TP
    timeout = timedelta(seconds=INIT_TIMEOUT_S)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=size, timeout=timeout
    )
    group = dist.group.WORLD
    cpu_group = group if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    set_tp(TPInfo(rank, size, group, cpu_group))
    logger.info("joined TP group: rank %d of %d (%s)", rank, size, backend)
    return _TP


def destroy_tp() -> None:
    import torch.distributed as dist

    if _TP.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    set_tp(TPInfo())


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over TP ranks, in place; returns ``x``."""
    if _TP.size > 1:
        import torch.distributed as dist

        dist.all_reduce(x, group=_TP.group)
    return x


def all_gather_last(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along the last dim (rank order)."""
    if _TP.size == 1:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(_TP.size)]
    dist.all_gather(parts, x.contiguous(), group=_TP.group)
    return torch.cat(parts, dim=-1)


def broadcast_object(obj=None):
    """Leader's ``obj`` to every rank (followers pass None and get it back)."""
    if _TP.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_TP.cpu_group)
    return box[0]


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` any rank holds (KV page counts must agree)."""
    if _TP.size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_TP.cpu_group)
    return int(t.item())


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` on the leader (rank order); None on followers."""
    if _TP.size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * _TP.size if _TP.is_leader else None
    dist.gather_object(obj, out, dst=0, group=_TP.cpu_group)
    return out


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
