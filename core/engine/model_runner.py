"""Runs one scheduled batch through the model over the paged KV pool.

Turns the scheduler's per-request token ranges into the flat inputs a
``CausalLM`` takes (token ids, positions) and the ``AttentionMetadata`` the
attention backend plans once per pass, then returns logits only for the rows
that are sampled: the last token of each request whose sequence is complete
(every row of a decode batch).
"""

from __future__ import annotations

import torch

from pdcore.attention.base import AttentionImpl, AttentionMetadata
from pdcore.kvcache.pool import PADDING_PAGES, KVPool
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.scheduler.scheduler import ScheduledBatch

PAD_PAGE = PADDING_PAGES - 1  # page 0: zeroed, never allocated


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, attn: AttentionImpl, device):
        self.model = model
        self.pool = pool
        self.attn = attn
        self.device = torch.device(device)
        self.ctx = ForwardContext(attn, pool.layer_caches)
        self.graphs = None  # DecodeGraphs once captured (CUDA only)

    def capture_decode_graphs(self, make_attention, max_bs: int, context_len: int) -> list[int]:
        """Capture decode passes up to ``max_bs`` rows; returns the captured batch sizes."""
        from pdcore.engine.cuda_graph import DecodeGraphs

        self.graphs = DecodeGraphs(
            self.model,
            self.pool,
            make_attention,
            self.device,
            max_bs,
            context_len,
            self.ctx.kernels,
        )
        return self.graphs.sizes

    def build_inputs(self, batch: ScheduledBatch):
        """``(input_ids, positions, AttentionMetadata)`` on the device for ``batch``."""
        ps = self.pool.page_size
        tokens, pos_chunks = [], []
        seq_lens = []
        for req, start, ext in zip(batch.reqs, batch.prefix_lens, batch.extend_lens, strict=True):
            tokens.extend(req.tokens(start, start + ext))
            pos_chunks.append(torch.arange(start, start + ext))
            seq_lens.append(start + ext)
        width = max(-(-s // ps) for s in seq_lens)
        table = torch.full((len(batch.reqs), width), PAD_PAGE, dtype=torch.int64)
        for row, req in enumerate(batch.reqs):
            n = -(-seq_lens[row] // ps)
            table[row, :n] = torch.tensor(req.pages[:n], dtype=torch.int64)
        positions = torch.cat(pos_chunks)
        rows = torch.repeat_interleave(
            torch.arange(len(batch.reqs)), torch.tensor(batch.extend_lens)
        )
        slots = table[rows, positions // ps] * ps + positions % ps
        dev = self.device
        meta = AttentionMetadata(
            is_decode=batch.is_decode,
            page_table=table.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=dev),
            extend_lens=torch.tensor(batch.extend_lens, dtype=torch.int64, device=dev),
            cache_slots=slots.to(dev),
            seq_lens_cpu=seq_lens,
            extend_lens_cpu=list(batch.extend_lens),
        )
        input_ids = torch.tensor(tokens, dtype=torch.int64, device=dev)
        return input_ids, positions.to(dev), meta

    def forward(self, batch: ScheduledBatch) -> torch.Tensor | None:
        """Float32 logits ``[rows to sample, vocab]``, or None when no row samples."""
        with torch.inference_mode():
            input_ids, positions, meta = self.build_inputs(batch)
            graphs = self.graphs
            rows, longest = len(batch.reqs), max(meta.seq_lens_cpu)
            if batch.is_decode and graphs and graphs.can_run(rows, longest):
                return graphs.run(input_ids, positions, meta).float()  # every decode row samples
            self.attn.plan(meta)
            hidden = self.model(input_ids, positions, self.ctx)
            ends = torch.tensor(batch.extend_lens).cumsum(0) - 1
            picked = ends[torch.tensor(batch.sample, dtype=torch.bool)]
            if picked.numel() == 0:
                return None
            return self.model.compute_logits(hidden[picked.to(hidden.device)]).float()
