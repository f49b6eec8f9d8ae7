"""DeepSeek multi-head latent attention (MLA), absorbed, over the latent KV cache.

Per token the cache keeps only the normed latent ``c`` (rank R, from
``kv_a_proj_with_mqa`` and ``kv_a_layernorm``) and the roped key ``k_pe`` (P
dims), not per-head K and V. ``kv_b_proj`` would expand ``c`` into each head's
no-position key and its value; instead its two halves are folded into the
query (``W_UK``) and the output (``W_UV``), so attention runs on the latent
directly: ``q_nope . (W_UK c) = (W_UK^T q_nope) . c``. The attention backend
sees queries ``[T, heads, R + P]`` and returns ``[T, heads, R]`` (see
``pdcore.attention.torch_mla``).

Tensor parallelism: query heads (``q_proj``/``q_b_proj``, ``kv_b_proj``,
``o_proj``) split over ranks; the latent path (``q_a_proj``, ``kv_a_*``) is
replicated, so every rank caches the full latent. Under DP attention the heads
split over the attention group.
"""

from __future__ import annotations

import torch
from torch import nn

from pdcore.distributed.state import shard_range, tp
from pdcore.model.base import ForwardContext
from pdcore.model.config import ModelConfig
from pdcore.model.layers import RMSNorm
from pdcore.model.parallel import ColumnLinear, RowLinear
from pdcore.model.rotary import apply_rotary

# transformers builds q_a_layernorm and kv_a_layernorm with RMSNorm's default eps.
LATENT_NORM_EPS = 1e-6


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary over pairs ``(x0, x1), (x2, x3), ...`` of ``x`` ``[T, h, P]``, computed in
    float32; returns the rotated evens then odds (transformers' DeepSeek-V3 layout).

    ``cos``/``sin``: ``[T, P]`` as ``RotaryEmbedding`` gives them (angles repeated)."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class MLAttention(nn.Module):
    """Query (low-rank or full), latent KV, absorbed attention, output projection."""

    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        m = config.mla
        g = tp().attn
        self.layer_id = layer_id
        self.num_heads = shard_range(config.num_attention_heads, g.rank, g.size)[1]
        self.nope, self.rope, self.v_dim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        self.rank = m.kv_lora_rank
        self.interleaved = m.rope_interleave
        hidden, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
        q_out = heads * m.qk_head_dim
        self.q_lora = m.q_lora_rank is not None
        if not self.q_lora:
            self.q_proj = ColumnLinear(hidden, q_out, bias=False, group=g)
        else:
            self.q_a_proj = nn.Linear(hidden, m.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = ColumnLinear(m.q_lora_rank, q_out, bias=False, group=g)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.kv_b_proj = ColumnLinear(
            self.rank, heads * (self.nope + self.v_dim), bias=False, group=g
        )
        self.o_proj = RowLinear(heads * self.v_dim, hidden, bias=bias, group=g)

    def _query(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if not self.q_lora:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x), ctx.kernels))
        return q.view(x.shape[0], self.num_heads, self.nope + self.rope)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.interleaved:
            return rotate_interleaved(x, cos, sin)
        return apply_rotary(x, cos, sin)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        tokens = x.shape[0]
        if tokens == 0:  # an idle DP group: all its ranks skip attention alike
            return torch.zeros_like(x)
        q_nope, q_pe = self._query(x, ctx).split([self.nope, self.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent, ctx.kernels)
        q_pe = self._rotate(q_pe, cos, sin)
        k_pe = self._rotate(k_pe.unsqueeze(1), cos, sin)
        # kv_b_proj rows per head: nope key rows, then value rows, each of R columns.
        w_kv = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w_kv.split([self.nope, self.v_dim], dim=1)
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w_uk)
        q = torch.cat((q_latent, q_pe), dim=-1)
        out = ctx.attn.forward(q, latent.unsqueeze(1), k_pe, *ctx.kv_caches[self.layer_id])
        out = torch.einsum("thr,hvr->thv", out, w_uv)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.v_dim))
