"""Built-in multi-head latent attention (DeepSeek MLA) on plain torch ops, absorbed form.

The seam's arguments per layer are those of the Ascend ``ascend-mla`` backend:

- ``q``: ``[T, heads, R + P]``: the no-position query already multiplied into
  the latent space by the model (rank R), then its rotary part (P dims);
- ``k``: ``[T, 1, R]``, the normed latent ``c_kv`` of the new tokens; ``v``:
  ``[T, 1, P]``, their shared rotary key;
- ``k_cache`` / ``v_cache``: ``[pages, page_size, 1, R]`` / ``[..., P]``: the
  pool's latent tensor split by columns (possibly views of one tensor).

A score is ``q[:R] . c + q[R:] . k_pe`` (one key head shared by every query
head), and the output is the softmax-weighted latent ``[T, heads, R]``; the
model applies the value up-projection. Correct on any torch device and the
numerics reference for MLA backends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdcore.attention.base import AttentionConfig, store_kv
from pdcore.attention.torch_native import TorchNativeAttention


class TorchMLAAttention(TorchNativeAttention):
    """Per-request SDPA over gathered latent rows; decode runs as one padded batch.

    Planning (page gathers, the decode mask) is the MHA backend's: only what a
    cached row is made of differs.
    """

    def __init__(self, config: AttentionConfig):
        if config.num_kv_heads != 1:
            raise ValueError(
                f"MLA keeps one latent head shared by all query heads; got num_kv_heads="
                f"{config.num_kv_heads} (use an MHA backend such as 'torch' for MHA/GQA models)"
            )
        super().__init__(config)

    def forward(self, q, k, v, k_cache, v_cache):
        if self.meta is None:
            raise RuntimeError("plan() must be called before forward()")
        rank, rope = k_cache.shape[-1], v_cache.shape[-1]
        if q.shape[-1] != rank + rope:
            raise ValueError(
                f"query dim {q.shape[-1]} != latent rank {rank} + rope dim {rope} of the caches"
            )
        store_kv(k, v, k_cache, v_cache, self.meta.cache_slots)
        if self.meta.is_decode:
            return self._decode(q, k_cache, v_cache)
        return self._extend(q, k_cache, v_cache)

    def _extend(self, q, k_cache, v_cache):
        meta, rank = self.meta, k_cache.shape[-1]
        out = q.new_empty(*q.shape[:-1], rank)
        start = 0
        for row, (seq_len, ext) in enumerate(
            zip(meta.seq_lens_cpu, meta.extend_lens_cpu, strict=True)
        ):
            latent = self._gather(k_cache, row, seq_len)  # [L, 1, R]
            keys = torch.cat((latent, self._gather(v_cache, row, seq_len)), dim=-1)
            q_pos = torch.arange(seq_len - ext, seq_len, device=q.device)
            mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]
            res = self._attend(q[start : start + ext].transpose(0, 1), keys, latent, mask)
            out[start : start + ext] = res.transpose(0, 1)
            start += ext
        return out

    def _decode(self, q, k_cache, v_cache):
        """One query per request over its pages (gather indices planned per batch)."""
        slots, length, mask = self._decode_index
        batch, rank = q.shape[0], k_cache.shape[-1]
        latent = k_cache.view(-1, rank).index_select(0, slots).view(batch, length, 1, rank)
        rope = v_cache.view(-1, v_cache.shape[-1]).index_select(0, slots)
        keys = torch.cat((latent, rope.view(batch, length, 1, -1)), dim=-1)
        res = self._attend(q.unsqueeze(2), keys.transpose(1, 2), latent.transpose(1, 2), mask)
        return res.squeeze(2)

    def _attend(self, query, keys, values, mask):
        """SDPA of ``[..., H, Tq, R+P]`` queries over one shared head of ``keys``/``values``."""
        if keys.dim() == 3:  # one request: [L, 1, D] -> [1, L, D]
            keys, values = keys.transpose(0, 1), values.transpose(0, 1)
        return F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            scale=self.config.softmax_scale,
            enable_gqa=True,
        )
