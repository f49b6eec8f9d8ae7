"""Paged attention written with explicit matmul + softmax (no SDPA)."""

from __future__ import annotations

import torch

from pdcore.attention.base import AttentionImpl, store_kv


class MatmulAttention(AttentionImpl):
    def forward(self, q, k, v, k_cache, v_cache):
        meta, cfg = self.meta, self.config
        store_kv(k, v, k_cache, v_cache, meta.cache_slots)
        page_size = k_cache.shape[1]
        group = cfg.num_heads // cfg.num_kv_heads
        out = torch.empty_like(q)
        start = 0
        for row, (seq_len, ext) in enumerate(
            zip(meta.seq_lens_cpu, meta.extend_lens_cpu, strict=True)
        ):
            pages = meta.page_table[row, : -(-seq_len // page_size)]
            keys = k_cache[pages].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)
            values = v_cache[pages].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)
            query = q[start : start + ext]  # [ext, H, D]
            scores = torch.einsum("qhd,khd->hqk", query, keys) * cfg.softmax_scale
            q_pos = torch.arange(seq_len - ext, seq_len, device=q.device)
            causal = torch.arange(seq_len, device=q.device)[None, :] > q_pos[:, None]
            scores.masked_fill_(causal[None], float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)
            out[start : start + ext] = torch.einsum("hqk,khd->qhd", probs, values)
            start += ext
        return out
