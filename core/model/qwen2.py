"""Qwen2 / Qwen2.5: Llama-shaped with a bias on q/k/v (transformers hardcodes it; o_proj
has none)."""

from __future__ import annotations

from pdcore.model.config import ModelConfig
from pdcore.model.decoder import DecoderLM
from pdcore.model.layers import AttentionSpec


class Qwen2ForCausalLM(DecoderLM):
    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(qkv_bias=True, o_bias=False)
