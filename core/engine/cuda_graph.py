"""Decode forward passes captured as CUDA graphs, one per padded batch size.

A decode step on a GPU is launch-bound for small batches: hundreds of small
kernels per token. Replaying a captured graph launches them all at once. Each
batch size gets its own attention instance, planned once at capture time with
static metadata (one new token per row, a page table as wide as the context),
so a replay only copies the step's inputs into the static buffers. Rows past
the real batch point at the padding page and are ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from pdcore.attention.base import AttentionImpl, AttentionMetadata
from pdcore.kvcache.pool import PADDING_PAGES, KVPool
from pdcore.model.base import CausalLM, ForwardContext

log = logging.getLogger(__name__)
PAD_PAGE = PADDING_PAGES - 1
BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in BATCH_SIZES if b <= max_bs]
    return sizes if sizes and sizes[-1] == max_bs else [*sizes, max_bs]


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        pool: KVPool,
        make_attention: Callable[[], AttentionImpl],
        device: torch.device,
        max_bs: int,
        context_len: int,
        kernels,
    ):
        start = time.monotonic()
        self.sizes = graph_batch_sizes(max_bs)
        self.page_size = ps = pool.page_size
        self.max_pages = -(-context_len // ps)
        n = self.sizes[-1]

        def full(shape, value):
            return torch.full(shape, value, dtype=torch.int64, device=device)

        self.input_ids = full((n,), 0)
        self.positions = full((n,), 0)
        self.page_table = full((n, self.max_pages), PAD_PAGE)
        self.seq_lens = full((n,), 1)
        self.extend_lens = full((n,), 1)
        self.cache_slots = full((n,), PAD_PAGE * ps)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self._keep: dict[int, tuple] = {}  # each graph's planned attention and metadata
        self.replays = 0
        mempool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for bs in reversed(self.sizes):  # largest first: smaller ones reuse its pool
                self._capture(bs, model, pool, make_attention(), context_len, mempool, kernels)
        log.info(
            "captured decode CUDA graphs for batch sizes %s in %.1fs",
            self.sizes,
            time.monotonic() - start,
        )

    def _capture(self, bs, model, pool, attn, context_len, mempool, kernels) -> None:
        meta = AttentionMetadata(
            is_decode=True,
            page_table=self.page_table[:bs],
            seq_lens=self.seq_lens[:bs],
            extend_lens=self.extend_lens[:bs],
            cache_slots=self.cache_slots[:bs],
            seq_lens_cpu=[context_len] * bs,  # plan for the longest context it may see
            extend_lens_cpu=[1] * bs,
        )
        attn.plan(meta)
        ctx = ForwardContext(attn, pool.layer_caches, kernels)

        def step():
            hidden = model(self.input_ids[:bs], self.positions[:bs], ctx)
            return model.compute_logits(hidden)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile kernels and settle the allocator first
            step()
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=mempool):
            self.logits[bs] = step()
        self.graphs[bs] = graph
        self._keep[bs] = (attn, meta, ctx)

    def can_run(self, batch_size: int, max_seq_len: int) -> bool:
        return batch_size <= self.sizes[-1] and max_seq_len <= self.max_pages * self.page_size

    def run(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        """Float32 logits ``[batch, vocab]`` of this decode step (a view: use before the next)."""
        n = meta.batch_size
        bs = next(b for b in self.sizes if b >= n)
        width = meta.page_table.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.page_table[:bs].fill_(PAD_PAGE)
        self.page_table[:n, :width].copy_(meta.page_table)
        self.seq_lens[n:bs].fill_(1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.cache_slots[n:bs].fill_(PAD_PAGE * self.page_size)
        self.cache_slots[:n].copy_(meta.cache_slots)
        self.graphs[bs].replay()
        self.replays += 1
        return self.logits[bs][:n]
