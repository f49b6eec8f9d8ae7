"""The Llama-shaped decoder-only LM that every family here specializes.

Families differ only in their ``AttentionSpec`` (biases, q/k norm); the stack,
the tied or separate LM head and weight loading are shared.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pdcore.distributed.state import tp
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.model.config import ModelConfig
from pdcore.model.layers import AttentionSpec, DecoderLayer, RMSNorm
from pdcore.model.parallel import VocabEmbedding, VocabHead, gather_logits
from pdcore.model.rotary import RotaryEmbedding
from pdcore.model.weights import load_hf_weights


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's ``model.*`` sub-tree)."""

    def __init__(self, config: ModelConfig, spec: AttentionSpec):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, tp().attn)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, spec) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling,
            config.max_position_embeddings,
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions)
        pending = None
        for layer in self.layers:
            pending, x = layer(x, pending, cos, sin, ctx)
        if pending is None:  # no layers
            return self.norm(x, ctx.kernels)
        norm = self.norm
        return ctx.kernels.add_rms_norm(pending, x, norm.weight, norm.eps)[0]


class DecoderLM(CausalLM):
    """``CausalLM`` over ``DecoderModel``; subclasses say how attention differs."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.model = DecoderModel(config, self.attention_spec(config))
        # Tied models read the embedding matrix directly: no second parameter to re-tie
        # after meta-device construction.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else VocabHead(config.hidden_size, config.vocab_size, tp().attn)
        )

    @classmethod
    @abstractmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        """The family's attention options for this config."""

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        logits = F.linear(hidden, head.weight)
        return gather_logits(logits, self.config.vocab_size, head.group).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        ignore = ("lm_head.weight",) if self.lm_head is None else ()
        load_hf_weights(self, weights, ignore=ignore)
