"""Built-in attention on plain torch ops over the paged cache (any torch device).

Correct everywhere and the reference for the conformance kit's numerics; the
CUDA and Ascend plugins supply faster kernels behind the same interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdcore.attention.base import AttentionImpl, store_kv


class TorchNativeAttention(AttentionImpl):
    """Gathers each request's pages and runs SDPA; decode runs as one padded batch."""

    def forward(self, q, k, v, k_cache, v_cache):
        meta = self.meta
        if meta is None:
            raise RuntimeError("plan() must be called before forward()")
        store_kv(k, v, k_cache, v_cache, meta.cache_slots)
        if meta.is_decode:
            return self._decode(q, k_cache, v_cache)
        return self._extend(q, k_cache, v_cache)

    def _gather(self, cache, row: int, length: int):
        page_size = cache.shape[1]
        num_pages = -(-length // page_size)
        pages = self.meta.page_table[row, :num_pages]
        return cache[pages].reshape(num_pages * page_size, *cache.shape[2:])[:length]

    def _extend(self, q, k_cache, v_cache):
        cfg, meta = self.config, self.meta
        out = torch.empty_like(q)
        start = 0
        for row, (seq_len, ext) in enumerate(
            zip(meta.seq_lens_cpu, meta.extend_lens_cpu, strict=True)
        ):
            prefix = seq_len - ext
            keys = self._gather(k_cache, row, seq_len).transpose(0, 1)
            values = self._gather(v_cache, row, seq_len).transpose(0, 1)
            query = q[start : start + ext].transpose(0, 1)
            q_pos = torch.arange(prefix, seq_len, device=q.device)
            k_pos = torch.arange(seq_len, device=q.device)
            mask = k_pos[None, :] <= q_pos[:, None]
            res = F.scaled_dot_product_attention(
                query,
                keys,
                values,
                attn_mask=mask,
                scale=cfg.softmax_scale,
                enable_gqa=cfg.num_heads != cfg.num_kv_heads,
            )
            out[start : start + ext] = res.transpose(0, 1)
            start += ext
        return out

    def plan(self, meta):
        super().plan(meta)
        self._decode_index = None
        if meta.is_decode:
            page_size = self.config.page_size
            max_pages = -(-max(meta.seq_lens_cpu) // page_size)
            pages = meta.page_table[:, :max_pages]
            offsets = torch.arange(page_size, device=pages.device)
            slots = (pages[:, :, None] * page_size + offsets).reshape(-1)
            length = max_pages * page_size
            positions = torch.arange(length, device=pages.device)
            mask = positions[None, :] < meta.seq_lens.to(pages.device)[:, None]
            self._decode_index = (slots, length, mask[:, None, None, :])

    def _decode(self, q, k_cache, v_cache):
        """One query per request: gather its pages once (indices planned per batch)."""
        cfg = self.config
        slots, length, mask = self._decode_index
        batch, heads = q.shape[0], k_cache.shape[2:]
        keys = k_cache.view(-1, *heads).index_select(0, slots).view(batch, length, *heads)
        values = v_cache.view(-1, *heads).index_select(0, slots).view(batch, length, *heads)
        res = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [B, H, 1, D]
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask,
            scale=cfg.softmax_scale,
            enable_gqa=cfg.num_heads != cfg.num_kv_heads,
        )
        return res.squeeze(2)
