"""Llama 2/3/3.x (and Llama-architecture models such as SmolLM2)."""

from __future__ import annotations

from pdcore.model.config import ModelConfig
from pdcore.model.decoder import DecoderLM
from pdcore.model.layers import AttentionSpec


class LlamaForCausalLM(DecoderLM):
    """``attention_bias`` puts a bias on all four projections, o_proj included."""

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(qkv_bias=config.attention_bias, o_bias=config.attention_bias)
