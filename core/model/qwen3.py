"""Qwen3 (dense): per-head RMSNorm of q and k before RoPE; biases only when
``attention_bias`` (then on all four projections)."""

from __future__ import annotations

from pdcore.model.config import ModelConfig
from pdcore.model.decoder import DecoderLM
from pdcore.model.layers import AttentionSpec


class Qwen3ForCausalLM(DecoderLM):
    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        bias = config.attention_bias
        return AttentionSpec(qkv_bias=bias, o_bias=bias, qk_norm=True)
