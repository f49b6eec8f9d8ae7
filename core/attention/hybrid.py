"""Prefill passes on one attention backend, decode passes on another.

SGLang's ``--prefill-attention-backend`` / ``--decode-attention-backend``: the
best prefill kernels and the best decode kernels often come from different
libraries (on an H100, FlashInfer's prefill reached 78% of the matmul peak
against 67% for pdcore's Triton kernels, while Triton's decode in CUDA graphs
was the faster one at batch 1). Both read and write the same paged KV pool, so
their KV layouts must agree; a pass that is not pure decode (prefill, chunked
prefill with decode rows) goes to the prefill backend. Decode CUDA graphs are
captured from the decode backend alone.
"""

from __future__ import annotations

from pdcore.attention.base import AttentionImpl, AttentionMetadata


class HybridAttention(AttentionImpl):
    def __init__(self, prefill: AttentionImpl, decode: AttentionImpl):
        super().__init__(decode.config)
        self.prefill = prefill
        self.decode = decode
        self.cuda_graph_safe = decode.cuda_graph_safe
        self._active: AttentionImpl | None = None

    def plan(self, meta: AttentionMetadata) -> None:
        super().plan(meta)
        self._active = self.decode if meta.is_decode else self.prefill
        self._active.plan(meta)

    def plan_capture(self, meta: AttentionMetadata) -> None:
        self.meta = meta
        self._active = self.decode
        self.decode.plan_capture(meta)

    def plan_replay(self, seq_lens: list[int], pages: list[list[int]]) -> None:
        self.decode.plan_replay(seq_lens, pages)

    @property
    def replans_for_graph(self) -> bool:
        return self.decode.replans_for_graph

    def forward(self, q, k, v, k_cache, v_cache):
        if self._active is None:
            raise RuntimeError("plan() must be called before forward()")
        return self._active.forward(q, k, v, k_cache, v_cache)
