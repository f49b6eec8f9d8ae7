"""What a side's ``KVManager`` needs to know about its KV cache, and room states."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pdcore.disaggregation.protocol import KVLayout
from pdcore.platform import MemoryKind


class KVPoll(enum.IntEnum):
    """Room states, numbered as SGLang's ``KVPoll``; final states are FAILED and SUCCESS.

    Prefill names: WAITING_FOR_DECODE (= BOOTSTRAPPING, decode's request not yet
    here) and READY (= WAITING_FOR_INPUT, chunks may be sent).
    """

    FAILED = 0
    BOOTSTRAPPING = 1
    WAITING_FOR_INPUT = 2
    TRANSFERRING = 3
    SUCCESS = 4
    WAITING_FOR_DECODE = 1
    READY = 2


FINAL = (KVPoll.FAILED, KVPoll.SUCCESS)


@dataclass(frozen=True)
class KVArgs:
    """The KV pool as the transfer layer sees it: buffers, shape and identity.

    ``kv_buffers``: ``(addr, nbytes)`` of each layer's K then V buffer (MLA: its
    one latent buffer), each ``num_pages`` equal pages. ``model``: identity
    string both sides must share.
    ``owner``: the object owning that memory (the pool), kept alive while the
    manager lives: a peer keeps writing to these addresses until the engine closes.
    """

    kv_buffers: tuple[tuple[int, int], ...]
    num_pages: int
    page_size: int
    kv_dtype: str
    layout: KVLayout
    model: str
    tp_rank: int = 0
    tp_size: int = 1
    memory_kind: MemoryKind = MemoryKind.DRAM
    device_id: int = 0
    owner: object = field(default=None, repr=False, compare=False)
    # This rank's KV heads (``layout.num_kv_heads`` is the model's total).
    kv_heads_first: int = 0
    kv_heads_count: int = 0  # 0: all heads

    def __post_init__(self):
        sizes = {n for _, n in self.kv_buffers}
        if not self.kv_buffers or len(sizes) != 1 or next(iter(sizes)) % self.num_pages:
            raise ValueError(
                f"kv buffers must be non-empty, equal-sized and whole pages; got sizes "
                f"{sorted(sizes)} for {self.num_pages} pages"
            )

    @property
    def page_bytes(self) -> int:
        return self.kv_buffers[0][1] // self.num_pages

    @property
    def local_heads(self) -> tuple[int, int]:
        """``(first, count)`` of the KV heads in this rank's pages."""
        return self.kv_heads_first, self.kv_heads_count or self.layout.num_kv_heads

    @classmethod
    def from_pool(
        cls,
        pool,
        model: str,
        tp_rank: int = 0,
        tp_size: int = 1,
        total_kv_heads: int | None = None,
        kv_heads_first: int = 0,
        memory_kind: MemoryKind = MemoryKind.DRAM,
    ) -> KVArgs:
        """From a ``pdcore.kvcache.pool.KVPool`` (duck-typed: no engine import).

        Under TP the pool holds ``pool.shape.num_kv_heads`` heads from
        ``kv_heads_first`` of the model's ``total_kv_heads``. ``memory_kind``: the
        engine's ``Platform.memory_kind`` (the device type does not tell it: a
        platform's tensors may live anywhere).
        """
        shape = pool.shape
        total = total_kv_heads or shape.num_kv_heads
        return cls(
            kv_buffers=tuple(pool.buffers()),
            num_pages=pool.num_pages,
            page_size=pool.page_size,
            kv_dtype=str(shape.dtype).removeprefix("torch."),
            layout=KVLayout(shape.is_mla, total, shape.head_dim, shape.num_layers),
            model=model,
            tp_rank=tp_rank,
            tp_size=tp_size,
            memory_kind=memory_kind,
            device_id=pool.device.index or 0,
            owner=pool,
            kv_heads_first=kv_heads_first,
            kv_heads_count=shape.num_kv_heads,
        )
