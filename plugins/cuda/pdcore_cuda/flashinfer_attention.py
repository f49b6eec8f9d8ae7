"""The ``flashinfer`` attention backend: FlashInfer's paged prefill and decode kernels.

``plan`` builds FlashInfer's CSR page table (indptr, page indices, last-page
lengths) once per forward pass and plans the matching wrapper; every layer then
only calls ``run``. The pool's native layout is FlashInfer's "NHD", so the
caches are passed as they are. New K/V rows are stored by pdcore first
(``store_kv``), so prefill attends over prefix and new tokens in the cache.
FlashInfer computes in float16/bfloat16 only.
"""

from __future__ import annotations

import torch

from pdcore.attention.base import AttentionConfig, AttentionImpl
from pdcore_cuda.triton_attention import store_kv_fused

WORKSPACE_BYTES = 128 << 20
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128, 256)  # head_dim 32 fails in FlashInfer 0.7.2's prefill


class FlashInferAttention(AttentionImpl):
    def __init__(self, config: AttentionConfig):
        if config.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"flashinfer computes in float16/bfloat16, not {config.dtype}; "
                "use --dtype bfloat16 or --attention-backend triton"
            )
        if config.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"flashinfer kernels take head_dim {SUPPORTED_HEAD_DIMS}, not {config.head_dim}; "
                "use --attention-backend triton"
            )
        super().__init__(config)
        import flashinfer

        self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=config.device)
        group = config.num_heads // config.num_kv_heads
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace, "NHD", use_tensor_cores=group >= 4
        )
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        self._wrapper = None

    def plan(self, meta) -> None:
        super().plan(meta)
        cfg = self.config
        ps = cfg.page_size
        pages = [-(-s // ps) for s in meta.seq_lens_cpu]
        kv_indptr = torch.zeros(len(pages) + 1, dtype=torch.int32)
        kv_indptr[1:] = torch.tensor(pages, dtype=torch.int32).cumsum(0)
        tails = [s - (n - 1) * ps for s, n in zip(meta.seq_lens_cpu, pages, strict=True)]
        last = torch.tensor(tails, dtype=torch.int32)
        width = meta.page_table.shape[1]
        used = torch.arange(width)[None, :] < torch.tensor(pages)[:, None]
        indices = meta.page_table[used.to(meta.page_table.device)].to(torch.int32)
        common = dict(sm_scale=cfg.softmax_scale, q_data_type=cfg.dtype, kv_data_type=cfg.dtype)
        if meta.is_decode:
            self._decode.plan(
                kv_indptr.to(cfg.device), indices, last.to(cfg.device),
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, ps, **common,
            )  # fmt: skip
            self._wrapper = self._decode
        else:
            qo_indptr = torch.zeros(len(pages) + 1, dtype=torch.int32)
            qo_indptr[1:] = torch.tensor(meta.extend_lens_cpu, dtype=torch.int32).cumsum(0)
            self._prefill.plan(
                qo_indptr.to(cfg.device), kv_indptr.to(cfg.device), indices, last.to(cfg.device),
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, ps, causal=True, **common,
            )  # fmt: skip
            self._wrapper = self._prefill

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is None:
            raise RuntimeError("plan() must be called before forward()")
        store_kv_fused(k, v, k_cache, v_cache, self.meta.cache_slots)
        return self._wrapper.run(q.contiguous(), (k_cache, v_cache))
