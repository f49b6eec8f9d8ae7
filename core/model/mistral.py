"""Mistral: Llama-shaped, no biases. Its sliding window is not implemented (attention
is always full), so ``ModelConfig.max_context_len`` caps sequences at the window."""

from __future__ import annotations

from pdcore.model.config import ModelConfig
from pdcore.model.decoder import DecoderLM
from pdcore.model.layers import AttentionSpec


class MistralForCausalLM(DecoderLM):
    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec()
