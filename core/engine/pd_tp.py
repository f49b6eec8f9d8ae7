"""PD under tensor parallelism: what the non-leader ranks do, and the leader's gather.

The leader rank owns the PD control plane (bootstrap server or client, rooms,
notices) and, on prefill, every write. Decode's other ranks each register
their KV pool with a transfer engine of their own (``RankReceiver``) so
prefill writes each rank exactly its heads; the leader advertises them in the
handshake. Prefill's other ranks only hand their heads of finished chunks to
the leader (``KVStage``), which stages each decode rank's heads contiguously.
"""

from __future__ import annotations

import logging
import time

import torch

from pdcore.disaggregation.protocol import RankEndpoint
from pdcore.disaggregation.staging import assemble_heads, select_pages
from pdcore.disaggregation.transfer import MemoryRegion, TransferConfig
from pdcore.distributed.state import tp
from pdcore.distributed.wire import broadcast_msg, gather_msgs

logger = logging.getLogger(__name__)

STAGE_PAGES = "pages to stage from the TP leader"


class RankReceiver:
    """A decode rank other than the leader: its pool, registered for prefill's writes."""

    def __init__(self, kv_args, backend: str, hostname: str, ib_device: str | None, options: dict):
        from pdcore.registry import get_registry

        config = TransferConfig(
            role="decode",
            hostname=hostname,
            ib_device=ib_device,
            memory_kind=kv_args.memory_kind,
            device_id=kv_args.device_id,
            options=dict(options),
        )
        self.engine = get_registry().get("transfer", backend).factory(config)
        a = kv_args
        self.engine.register(
            [MemoryRegion(p, n, a.memory_kind, a.device_id) for p, n in a.kv_buffers]
        )
        first, count = a.local_heads
        self.endpoint = RankEndpoint(
            tp_rank=a.tp_rank,
            kv_heads_first=first,
            kv_heads_count=count,
            transfer_metadata=self.engine.metadata(),
            kv_buffers=[p for p, _ in a.kv_buffers],
            page_bytes=a.page_bytes,
        )

    def close(self) -> None:
        self.engine.close()


def exchange_rank_endpoints(receiver: RankReceiver | None) -> list[RankEndpoint]:
    """Every rank calls this once at startup; the leader gets the others' endpoints."""
    mine = receiver.endpoint if receiver is not None else None
    got = gather_msgs(mine, RankEndpoint | None, "KV endpoint of a TP rank")
    return [e for e in got[1:] if e is not None] if tp().is_leader else []


class KVStage:
    """Prefill ranks' part in staging: after each forward, the leader names the
    pages of the chunks it must stage and every rank hands it their heads."""

    def __init__(self, pool, total_kv_heads: int):
        self.tensors = pool.tensors()
        self.total_kv_heads = total_kv_heads

    def lead(self, manager) -> None:
        """Leader: stage the chunks queued by this step (broadcasts when TP > 1)."""
        pages = manager.take_staging_pages() if manager is not None else []
        if tp().attn_size > 1:
            broadcast_msg(pages, list[list[int]], STAGE_PAGES)
        if not pages:
            return
        started = time.monotonic()
        local = self._local(pages)
        full = assemble_heads(self._gather(local), self.total_kv_heads)
        manager.stage_chunks(pages, full, time.monotonic() - started)

    def follow(self) -> None:
        """Follower: hand the leader our heads of the pages it names."""
        pages = broadcast_msg(None, list[list[int]], STAGE_PAGES)
        if pages:
            self._gather(self._local(pages))

    def _local(self, pages: list[list[int]]) -> torch.Tensor:
        return select_pages(self.tensors, [p for chunk in pages for p in chunk])

    def _gather(self, local: torch.Tensor) -> list[torch.Tensor] | None:
        g = tp().attn  # this engine's ranks
        if g.size == 1:
            return [local]
        if local.shape[1] == 0:  # chunks without pages (aux only): nothing to move
            return [local] * g.size
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(g.size)] if g.rank == 0 else None
        dist.gather(local.contiguous(), parts, dst=g.first, group=g.group)
        return parts
