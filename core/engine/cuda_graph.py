"""Decode forward passes captured as device graphs, one per padded batch size.

Capture, replay, events and pinned buffers go through the platform
(``Platform.capture_graph``, ``make_event``, ``pinned_empty``): CUDA graphs on
NVIDIA GPUs, whatever a platform plugin provides elsewhere.

A decode step on a GPU is launch-bound for small batches: hundreds of small
kernels per token. Replaying a captured graph launches them all at once. Each
batch size gets its own attention instance, planned once at capture time with
static metadata (one new token per row, a page table as wide as the context),
so a replay only copies the step's inputs into the static buffers. Rows past
the real batch point at the padding page and are ignored. Backends whose
captured kernels follow a host-computed schedule (FlashInfer) re-plan before
each replay into the same device buffers (``AttentionImpl.plan_replay``).

A step's inputs go in with as little host work as possible, since the GPU waits
for it between two replays: tokens, positions, cache slots and sequence lengths
are written by numpy into one pinned buffer per graph and cross in one
asynchronous copy; the page table, which changes only when a row gains a page or
the batch changes, is copied only for the rows that changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from pdcore.attention.base import AttentionImpl, AttentionMetadata
from pdcore.kvcache.pool import PADDING_PAGES, KVPool
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.platform import Platform

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
        platform: Platform,
    ):
        start = time.monotonic()
        self.sizes = graph_batch_sizes(max_bs)
        self.page_size = ps = pool.page_size
        self.max_pages = -(-context_len // ps)
        n = self.sizes[-1]
        self.platform = platform

        self.page_table = torch.full(
            (n, self.max_pages), PAD_PAGE, dtype=torch.int64, device=device
        )
        self.extend_lens = torch.ones(n, dtype=torch.int64, device=device)
        # Per graph: [tokens | positions | cache slots | seq lens], bs each, on the
        # device and in pinned host memory (numpy views of it fill each step).
        self.packed: dict[int, torch.Tensor] = {}
        self.staging: dict[int, torch.Tensor] = {}
        self._staging_np: dict[int, np.ndarray] = {}
        # The page table's rows as on the device (padding beyond each list).
        self._rows: list[list[int]] = [[] for _ in range(n)]
        self._table_staging = platform.pinned_empty(n * self.max_pages, torch.int64)
        self._table_np = self._table_staging.numpy()
        self._copied = platform.make_event()  # the staging buffers may be rewritten after it
        self.graphs: dict[int, object] = {}  # replay() reruns the captured pass
        self.logits: dict[int, torch.Tensor] = {}
        self._keep: dict[int, tuple] = {}  # each graph's planned attention and metadata
        self.replays = 0
        mempool = platform.graph_pool()
        with torch.inference_mode():
            for bs in reversed(self.sizes):  # largest first: smaller ones reuse its pool
                self._capture(bs, model, pool, make_attention(), context_len, mempool, kernels)
        log.info(
            "captured decode graphs (%s) for batch sizes %s in %.1fs",
            platform.name,
            self.sizes,
            time.monotonic() - start,
        )

    def _capture(self, bs, model, pool, attn, context_len, mempool, kernels) -> None:
        packed = torch.zeros(4 * bs, dtype=torch.int64, device=self.page_table.device)
        input_ids, positions, cache_slots, seq_lens = packed.view(4, bs)
        cache_slots.fill_(PAD_PAGE * self.page_size)
        seq_lens.fill_(1)
        self.packed[bs] = packed
        self.staging[bs] = self.platform.pinned_empty(4 * bs, torch.int64)
        self._staging_np[bs] = self.staging[bs].numpy().reshape(4, bs)
        meta = AttentionMetadata(
            is_decode=True,
            page_table=self.page_table[:bs],
            seq_lens=seq_lens,
            extend_lens=self.extend_lens[:bs],
            cache_slots=cache_slots,
            seq_lens_cpu=[context_len] * bs,  # plan for the longest context it may see
            extend_lens_cpu=[1] * bs,
        )
        attn.plan_capture(meta)
        ctx = ForwardContext(attn, pool.layer_caches, kernels)

        def step():
            hidden = model(input_ids, positions, ctx)
            return model.compute_logits(hidden).float()  # the sampler's dtype, in the graph

        self.graphs[bs], self.logits[bs] = self.platform.capture_graph(step, mempool)
        self._keep[bs] = (attn, meta, ctx)

    def can_run(self, batch_size: int, max_seq_len: int) -> bool:
        return batch_size <= self.sizes[-1] and max_seq_len <= self.max_pages * self.page_size

    def run(self, plan, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits ``[batch, vocab]`` of the decode step ``plan`` (a ``StepPlan``
        of one token per row); a view: use it before the next replay. ``tokens``: the
        rows' input tokens on the device (the last step's samples, not yet on the
        host: overlap scheduling) instead of ``plan.tokens``."""
        n = len(plan.extend_lens)
        bs = next(b for b in self.sizes if b >= n)
        ps = self.page_size
        self._copied.synchronize()  # the last step's copies have left the staging buffers
        host_tokens, positions, slots, seq_lens = self._staging_np[bs]
        prefix = np.asarray(plan.prefix_lens, dtype=np.int64)
        host_tokens[:n] = 0 if tokens is not None else plan.tokens
        positions[:n] = prefix
        seq_lens[:n] = prefix + 1
        last = [pages[p // ps] for pages, p in zip(plan.pages, plan.prefix_lens, strict=True)]
        slots[:n] = np.asarray(last, dtype=np.int64) * ps + prefix % ps
        host_tokens[n:], positions[n:], seq_lens[n:] = 0, 0, 1
        slots[n:] = PAD_PAGE * ps
        self._copy_changed_rows(plan.pages, bs)
        attn = self._keep[bs][0]
        if attn.replans_for_graph:  # its copies are covered by ``_copied`` below
            lens = [p + 1 for p in plan.prefix_lens]
            rows = [pages[: -(-s // ps)] for pages, s in zip(plan.pages, lens, strict=True)]
            attn.plan_replay(lens + [1] * (bs - n), rows + [[PAD_PAGE]] * (bs - n))
        self.packed[bs].copy_(self.staging[bs], non_blocking=True)
        self._copied.record()
        if tokens is not None:  # stream-ordered after the step that sampled them
            self.packed[bs][:n].copy_(tokens)
        self.graphs[bs].replay()
        self.replays += 1
        return self.logits[bs][:n]

    def _copy_changed_rows(self, pages: list[list[int]], bs: int) -> None:
        """Bring the page table's rows ``[:bs]`` to ``pages`` (rows past it: padding),
        copying only the span of rows that differ from what the device holds."""
        rows = self._rows
        n = len(pages)
        changed = [r for r in range(bs) if (pages[r] if r < n else []) != rows[r]]
        if not changed:
            return
        lo, hi = changed[0], changed[-1] + 1
        new = [list(pages[r]) if r < n else [] for r in range(lo, hi)]
        width = max(1, *(len(p) for p in new), *(len(rows[r]) for r in range(lo, hi)))
        block = self._table_np[: (hi - lo) * width].reshape(hi - lo, width)
        block.fill(PAD_PAGE)
        for i, p in enumerate(new):
            block[i, : len(p)] = p
        src = self._table_staging[: (hi - lo) * width].view(hi - lo, width)
        self.page_table[lo:hi, :width].copy_(src, non_blocking=True)
        rows[lo:hi] = new
