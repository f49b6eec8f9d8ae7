"""A real 2-layer GQA transformer with random weights, for engine tests.

Small enough to run hundreds of requests on 2 CPU cores, but a genuine causal
LM: attention goes through the paged cache, so wrong KV (pages, slots,
positions, prefix reuse) changes the generated tokens. float64 keeps greedy
comparisons between batched and one-by-one runs free of near-ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdcore.attention.base import AttentionImpl
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.model.config import ModelConfig

VOCAB = 128
EOS = 1


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        architecture="TinyForCausalLM",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        eos_token_ids=[EOS],
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary embedding over ``[T, heads, dim]`` (half-split layout)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angles = positions.to(x.dtype)[:, None] * freqs[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.norm1 = nn.RMSNorm(h)
        self.q = nn.Linear(h, self.heads * d, bias=False)
        self.k = nn.Linear(h, self.kv_heads * d, bias=False)
        self.v = nn.Linear(h, self.kv_heads * d, bias=False)
        self.o = nn.Linear(self.heads * d, h, bias=False)
        self.norm2 = nn.RMSNorm(h)
        self.up = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)

    def forward(self, x, positions, attn: AttentionImpl, kv):
        t = x.shape[0]
        y = self.norm1(x)
        q = rope(self.q(y).view(t, self.heads, self.dim), positions)
        k = rope(self.k(y).view(t, self.kv_heads, self.dim), positions)
        v = self.v(y).view(t, self.kv_heads, self.dim)
        x = x + self.o(attn.forward(q, k, v, kv[0], kv[1]).reshape(t, -1))
        return x + self.down(F.silu(self.up(self.norm2(x))))


class TinyLM(CausalLM):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:  # norms keep their ones
                    fan_in = 1 if name.startswith("embed") else p.shape[-1]
                    p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            self.lm_head.weight.mul_(4.0)  # confident, varied next tokens

    def forward(self, input_ids, positions, ctx: ForwardContext):
        x = self.embed(input_ids)
        for layer, kv in zip(self.layers, ctx.kv_caches, strict=True):
            x = layer(x, positions, ctx.attn, kv)
        return self.norm(x)

    def compute_logits(self, hidden):
        return self.lm_head(hidden).float()

    def load_weights(self, weights):
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                if name not in own:
                    raise KeyError(f"unknown weight {name!r}")
                own[name].copy_(tensor)


@dataclass
class Loaded:
    model: TinyLM
    config: ModelConfig


def load_tiny(server_args=None, device="cpu") -> Loaded:
    """``run_engine(model_factory="engine.tiny_model:load_tiny")`` entry point."""
    cfg = tiny_config()
    return Loaded(TinyLM(cfg).to(device=device, dtype=torch.float64), cfg)
