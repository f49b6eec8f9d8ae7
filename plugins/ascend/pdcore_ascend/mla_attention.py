"""The ``ascend-mla`` attention backend: multi-head latent attention (DeepSeek) on NPUs.

Absorbed MLA over a latent cache, as SGLang's and vllm-ascend's Ascend MLA
paths run it. The seam's arguments carry, per layer:

- ``q``: ``[T, heads, R + P]``, the absorbed no-position query (rank R) followed
  by its rotary part (P dims);
- ``k``: ``[T, 1, R]``, the compressed latent ``c_kv`` of the new tokens;
  ``v``: ``[T, 1, P]``, their shared rotary key;
- ``k_cache``: ``[pages, page_size, 1, R]`` latent pages; ``v_cache``:
  ``[pages, page_size, 1, P]`` rotary-key pages.

``_npu_reshape_and_cache`` writes both (latent as key, rotary key as value),
then ``npu_fused_infer_attention_score`` attends with ``query_rope``/``key_rope``
in the TND layout over the block table, causal from the bottom right; the
latent serves as both key and value, so the output is ``[T, heads, R]`` (the
model applies the value up-projection). Decode is the same call with one query
per request, which the operator runs as incremental attention.

No pdcore model uses MLA yet: this backend is exercised by its tests against
the fake operators and a dense latent-attention reference only.
"""

from __future__ import annotations

import itertools

import torch

from pdcore.attention.base import AttentionConfig, AttentionImpl, AttentionMetadata
from pdcore_ascend.attention import RIGHT_DOWN_CAUSAL, causal_mask, check_dtype_and_page
from pdcore_ascend.npu_ops import torch_npu


class AscendMLAAttention(AttentionImpl):
    """Latent-cache attention: one shared latent head, ``config.head_dim`` = R + P."""

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        if config.num_kv_heads != 1:
            raise ValueError(
                f"MLA keeps one latent head shared by all query heads; got num_kv_heads="
                f"{config.num_kv_heads} (use the 'ascend' backend for MHA/GQA models)"
            )
        check_dtype_and_page(config)
        self.ops = torch_npu()

    def plan(self, meta: AttentionMetadata) -> None:
        super().plan(meta)
        self.slots = meta.cache_slots.to(torch.int32)
        self.block_table = meta.page_table.to(torch.int32)
        self.q_ends = list(itertools.accumulate(meta.extend_lens_cpu))
        self.kv_lens = list(meta.seq_lens_cpu)
        self.mask = causal_mask(meta.page_table.device)

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is None:
            raise RuntimeError("plan() must be called before forward()")
        rank, rope = k_cache.shape[-1], v_cache.shape[-1]
        if q.shape[-1] != rank + rope:
            raise ValueError(
                f"query dim {q.shape[-1]} != latent rank {rank} + rope dim {rope} of the caches"
            )
        self.ops._npu_reshape_and_cache(
            key=k.contiguous(),
            value=v.contiguous(),
            key_cache=k_cache,
            value_cache=v_cache,
            slot_indices=self.slots,
        )
        pages, page_size = k_cache.shape[:2]
        latent = k_cache.view(pages, 1, page_size, rank)  # [pages, kv_heads=1, page, R]
        out, _ = self.ops.npu_fused_infer_attention_score(
            q[..., :rank].contiguous(),
            latent,
            latent,
            query_rope=q[..., rank:].contiguous(),
            key_rope=v_cache.view(pages, 1, page_size, rope),
            atten_mask=self.mask,
            block_table=self.block_table,
            input_layout="TND",
            block_size=page_size,
            actual_seq_lengths=self.q_ends,
            actual_seq_lengths_kv=self.kv_lens,
            num_key_value_heads=1,
            num_heads=self.config.num_heads,
            scale=self.config.softmax_scale,
            sparse_mode=RIGHT_DOWN_CAUSAL,
        )
        return out
