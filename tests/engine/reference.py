"""Cache-free reference decoding: recompute the whole sequence for every token.

The ground truth for the engine tests: no pages, no prefix reuse, no batching,
so any difference in the engine's outputs is a KV-cache or scheduling bug.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdcore.attention.base import AttentionConfig, AttentionImpl
from pdcore.model.base import ForwardContext


class DenseCausalAttention(AttentionImpl):
    """Causal SDPA over exactly the given q/k/v of one sequence; ignores the cache."""

    def forward(self, q, k, v, k_cache, v_cache):
        cfg = self.config
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            is_causal=True,
            scale=cfg.softmax_scale,
            enable_gqa=cfg.num_heads != cfg.num_kv_heads,
        )
        return out.transpose(0, 1)


def full_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Float32 logits of the last position of ``token_ids``."""
    return all_logits(model, token_ids)[-1]


def all_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Float32 logits ``[len(token_ids), vocab]`` of every position of ``token_ids``."""
    cfg = model.config
    attn = DenseCausalAttention(
        AttentionConfig(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, 1)
    )
    ctx = ForwardContext(attn, [(None, None)] * cfg.num_hidden_layers)
    with torch.inference_mode():
        ids = torch.tensor(token_ids)
        hidden = model(ids, torch.arange(len(ids)), ctx)
        return model.compute_logits(hidden)


def greedy_reference(
    model, prompt: list[int], max_new_tokens: int, eos: tuple[int, ...] = (), ignore_eos=False
) -> list[int]:
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(full_logits(model, prompt + out).argmax())
        out.append(token)
        if token in eos and not ignore_eos:
            break
    return out
