"""Building blocks of Llama-shaped decoders, written to match transformers' numerics.

Projections that read the same input are fused (q/k/v, gate/up) so each costs
one matmul; ``MergedLinear`` remembers which rows came from which HF tensor so
checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdcore.model.base import ForwardContext
from pdcore.model.config import ModelConfig
from pdcore.model.kernels import TORCH_KERNELS, LayerKernels


class RMSNorm(nn.Module):
    """RMS norm computed in float32, scaled after casting back (as HF's LlamaRMSNorm)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


class MergedLinear(nn.Linear):
    """Several projections of one input stacked along the output rows.

    ``shards`` maps the HF sub-module name (e.g. ``"q_proj"``) to its row count,
    in stacking order; the weight loader writes each HF tensor into its rows.
    """

    def __init__(self, in_features: int, shards: dict[str, int], bias: bool):
        super().__init__(in_features, sum(shards.values()), bias=bias)
        self.shards = dict(shards)

    def shard_rows(self) -> dict[str, tuple[int, int]]:
        """HF name -> (first row, row count)."""
        rows, start = {}, 0
        for name, size in self.shards.items():
            rows[name] = (start, size)
            start += size
        return rows


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up in one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, act: str):
        super().__init__()
        if act != "silu":
            raise ValueError(f"Unsupported hidden_act {act!r}: only 'silu' is implemented")
        self.intermediate_size = intermediate_size
        self.gate_up_proj = MergedLinear(
            hidden_size, {"gate_proj": intermediate_size, "up_proj": intermediate_size}, bias
        )
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


@dataclass(frozen=True)
class AttentionSpec:
    """The per-family differences of the attention block."""

    qkv_bias: bool = False  # Qwen2 (always), Llama/Qwen3 when attention_bias
    o_bias: bool = False  # Llama/Qwen3 when attention_bias; never Qwen2
    qk_norm: bool = False  # Qwen3: per-head RMSNorm of q and k before RoPE


class Attention(nn.Module):
    """q/k/v projection, optional q/k norm, RoPE, paged attention, output projection."""

    def __init__(self, config: ModelConfig, layer_id: int, spec: AttentionSpec):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(
            config.hidden_size,
            {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size},
            spec.qkv_bias,
        )
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=spec.o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if spec.qk_norm else None
        self.split_sizes = [q_size, kv_size, kv_size]

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.split_sizes, dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        kernels = ctx.kernels
        if self.q_norm is not None:
            q, k = self.q_norm(q, kernels), self.k_norm(k, kernels)
        q, k = kernels.rotary(q, k, cos, sin)
        out = ctx.attn.forward(q, k, v, *ctx.kv_caches[self.layer_id])
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig, layer_id: int, spec: AttentionSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, spec)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.mlp_bias, config.hidden_act
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        kernels = ctx.kernels
        attn = self.self_attn(self.input_layernorm(x, kernels), cos, sin, ctx)
        post = self.post_attention_layernorm
        h, x = kernels.add_rms_norm(attn, x, post.weight, post.eps)  # x += attn; h = norm(x)
        return x + self.mlp(h, kernels)
