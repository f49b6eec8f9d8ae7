"""Prefill-side staging: decode ranks whose KV heads are not whole prefill pages.

Under tensor parallelism each rank's pool holds only its KV heads. When decode
splits the heads differently from prefill (other TP size), or prefill runs
TP > 1 and its leader sends for all ranks, a decode rank's heads are a strided
slice of every token in the NHD layout. Instead of one descriptor per token,
the prefill leader gathers the chunk's pages of all heads (a TP collective),
copies each decode rank's heads into a contiguous block of a registered
staging buffer laid out exactly like that rank's pages, and writes the block
with one run per (layer buffer, span of consecutive destination pages).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from pdcore.distributed.state import kv_head_range
from pdcore.kvcache import host_memory


class StagingFull(Exception):
    """The staging buffer cannot hold a block of this size (even when empty)."""


class StagingArea:
    """A registered byte buffer handed out in extents; ``alloc`` waits for frees."""

    def __init__(self, nbytes: int, device: torch.device):
        if torch.device(device).type == "cpu":  # copied between processes: huge pages
            self.buf = host_memory.zeros((nbytes,), torch.uint8)
        else:
            self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.nbytes = nbytes
        self._free = [(0, nbytes)]  # (offset, size), sorted by offset
        self._used: dict[int, int] = {}
        self._cond = threading.Condition()

    @property
    def addr(self) -> int:
        return self.buf.data_ptr()

    def alloc(self, nbytes: int, timeout: float) -> int:
        """Offset of a free extent of ``nbytes`` (first fit); waits up to ``timeout``."""
        if nbytes > self.nbytes:
            raise StagingFull(
                f"a chunk needs {nbytes} staging bytes but the staging buffer holds "
                f"{self.nbytes}; raise PDCORE_DISAGGREGATION_STAGING_MB or lower "
                "--chunked-prefill-size"
            )
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (off, size) in enumerate(self._free):
                    if size >= nbytes:
                        self._free[i] = (off + nbytes, size - nbytes)
                        if size == nbytes:
                            del self._free[i]
                        self._used[off] = nbytes
                        return off
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {nbytes} staging bytes freed within {timeout:g}s")
                self._cond.wait(left)

    def free(self, offset: int) -> None:
        with self._cond:
            size = self._used.pop(offset)
            self._free.append((offset, size))
            self._free.sort()
            merged = [self._free[0]]
            for off, sz in self._free[1:]:
                last_off, last_sz = merged[-1]
                if last_off + last_sz == off:
                    merged[-1] = (last_off, last_sz + sz)
                else:
                    merged.append((off, sz))
            self._free = merged
            self._cond.notify_all()

    @property
    def bytes_in_use(self) -> int:
        with self._cond:
            return sum(self._used.values())

    def view(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        size = n * torch.empty((), dtype=dtype).element_size()
        return self.buf[offset : offset + size].view(dtype).view(shape)


@dataclass(frozen=True)
class RankTarget:
    """One decode rank as a destination: its KV heads and where its pages live."""

    heads_first: int
    heads_count: int
    kv_buffers: tuple[int, ...]
    page_bytes: int


def select_pages(tensors: list[torch.Tensor], pages: list[int]) -> torch.Tensor:
    """``[buffers, len(pages), page_size, heads, dim]``: these pages of every buffer."""
    idx = torch.tensor(pages, dtype=torch.int64, device=tensors[0].device)
    return torch.stack([t.index_select(0, idx) for t in tensors])


def assemble_heads(parts: list[torch.Tensor], total_heads: int) -> torch.Tensor:
    """Every TP rank's pages (rank order, heads on dim -2) -> all ``total_heads``."""
    size = len(parts)
    if size == 1:
        return parts[0]
    shape = list(parts[0].shape)
    shape[-2] = total_heads
    full = parts[0].new_empty(shape)
    for rank, part in enumerate(parts):
        first, count = kv_head_range(total_heads, rank, size)
        full[..., first : first + count, :] = part
    return full


def page_runs(block_addr: int, target: RankTarget, dst_pages: list[int]) -> list:
    """Runs writing a block ``[buffers, n, ...]`` into ``target``'s ``dst_pages``.

    One run per buffer and span of consecutive destination pages (the block is
    contiguous in chunk order, so only the destination side breaks spans).
    """
    pb, n = target.page_bytes, len(dst_pages)
    spans: list[list[int]] = []
    for i, d in enumerate(dst_pages):
        if spans and spans[-1][1] + spans[-1][2] == d:
            spans[-1][2] += 1
        else:
            spans.append([i, d, 1])
    return [
        (block_addr + (b * n + i) * pb, remote + d * pb, cnt * pb)
        for b, remote in enumerate(target.kv_buffers)
        for i, d, cnt in spans
    ]
