"""Building blocks of Llama-shaped decoders, written to match transformers' numerics.

Projections that read the same input are fused (q/k/v, gate/up) so each costs
one matmul; ``MergedLinear`` remembers which rows came from which HF tensor so
checkpoints load without renaming. Under tensor parallelism (``parallel``) a
rank holds its share of the heads and of the MLP's intermediate rows; the
output projections sum the shares with one all-reduce each. Under DP attention
the heads split over the attention group and the MLP runs over every DP
group's tokens (``run_mlp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdcore.distributed.state import kv_head_range, shard_range, tp
from pdcore.model.base import ForwardContext
from pdcore.model.config import ModelConfig
from pdcore.model.kernels import TORCH_KERNELS, LayerKernels
from pdcore.model.parallel import MergedLinear, RowLinear


class RMSNorm(nn.Module):
    """RMS norm computed in float32, scaled after casting back (as HF's LlamaRMSNorm)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


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
        self.down_proj = RowLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        gate_up = kernels.linear(x, self.gate_up_proj.weight, self.gate_up_proj.bias)
        return self.down_proj(kernels.silu_and_mul(gate_up), kernels)


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
        g = tp().attn
        d = config.head_dim
        q_first, self.num_heads = shard_range(config.num_attention_heads, g.rank, g.size)
        kv_first, self.num_kv_heads = kv_head_range(config.num_key_value_heads, g.rank, g.size)
        self.head_dim = d
        q_size = self.num_heads * d
        kv_size = self.num_kv_heads * d
        full_q, full_kv = config.num_attention_heads * d, config.num_key_value_heads * d
        self.qkv_proj = MergedLinear(
            config.hidden_size,
            {"q_proj": full_q, "k_proj": full_kv, "v_proj": full_kv},
            spec.qkv_bias,
            parts={
                "q_proj": (q_first * d, q_size),
                "k_proj": (kv_first * d, kv_size),
                "v_proj": (kv_first * d, kv_size),
            },
            group=g,
        )
        self.o_proj = RowLinear(full_q, config.hidden_size, bias=spec.o_bias, group=g)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if spec.qk_norm else None
        self.split_sizes = [q_size, kv_size, kv_size]

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        tokens = x.shape[0]
        if tokens == 0:  # an idle DP group: all its ranks skip attention alike
            return torch.zeros_like(x)
        kernels = ctx.kernels
        qkv = kernels.linear(x, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q, kernels), self.k_norm(k, kernels)
        q, k = kernels.rotary(q, k, cos, sin)
        out = ctx.attn.forward(q, k, v, *ctx.kv_caches[self.layer_id])
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim), kernels)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    The MLP's output is returned un-added, with the residual stream: the next layer
    (or the final norm) adds it inside its norm kernel (``add_rms_norm``), one launch
    instead of two per layer. The sum is the same tensor op either way."""

    def __init__(self, config: ModelConfig, layer_id: int, spec: AttentionSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, spec)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.mlp_bias, config.hidden_act
        )

    def forward(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mlp output, residual stream)``; ``pending``: the previous layer's MLP
        output, not yet added to ``x`` (None for the first layer)."""
        kernels = ctx.kernels
        pre = self.input_layernorm
        if pending is None:
            h = pre(x, kernels)
        else:
            h, x = kernels.add_rms_norm(pending, x, pre.weight, pre.eps)  # x += pending
        attn = self.self_attn(h, cos, sin, ctx)
        post = self.post_attention_layernorm
        h, x = kernels.add_rms_norm(attn, x, post.weight, post.eps)  # x += attn; h = norm(x)
        return run_mlp(self.mlp, h, ctx), x


def run_mlp(mlp: nn.Module, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """``mlp(h)``; under DP attention (``ctx.dp``) over every DP group's tokens, since
    the MLP's weights split over all TP ranks, keeping our own rows of the result."""
    if ctx.dp is None:
        return mlp(h, ctx.kernels)
    return ctx.dp.scatter(mlp(ctx.dp.gather(h), ctx.kernels))
