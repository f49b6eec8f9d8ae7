"""DeepSeek-V2 and DeepSeek-V3: MLA attention and DeepSeek MoE in a pre-norm decoder.

Layers before ``first_k_dense_replace`` (and off the ``moe_layer_freq`` grid)
keep a dense gated MLP; the rest route to experts. V2 and V3 share this code:
their differences (V2 softmax routing, V3 sigmoid routing with a score bias and
group-limited top-k, V3's optional non-interleaved rotary) are parsed into the
config (``pdcore.model.deepseek_config``). Checkpoint tensor names are the HF
ones (``model.layers.N.self_attn.kv_a_proj_with_mqa.weight``,
``model.layers.N.mlp.experts.E.gate_proj.weight``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pdcore.distributed.state import tp
from pdcore.model.base import CausalLM, ForwardContext
from pdcore.model.config import ModelConfig
from pdcore.model.layers import GatedMLP, RMSNorm, run_mlp
from pdcore.model.mla import MLAttention
from pdcore.model.moe import MoE
from pdcore.model.parallel import VocabEmbedding, VocabHead, gather_logits
from pdcore.model.rotary import RotaryEmbedding
from pdcore.model.weights import load_hf_weights

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


class DeepseekDecoderLayer(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``, the MLP dense or MoE."""

    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLAttention(config, layer_id)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.moe is not None and config.moe.is_moe_layer(layer_id):
            self.mlp = MoE(config)
        else:
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
        return x + run_mlp(self.mlp, h, ctx)


class DeepseekModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's ``model.*`` sub-tree)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, tp().attn)
        self.layers = nn.ModuleList(
            DeepseekDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.mla.qk_rope_head_dim,
            config.rope_theta,
            config.rope_scaling,
            config.max_position_embeddings,
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        return self.norm(x, ctx.kernels)


class DeepseekV2ForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig):
        if config.mla is None:
            raise ValueError(f"{config.architecture} needs MLA fields (kv_lora_rank, ...)")
        super().__init__(config)
        self.model = DeepseekModel(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else VocabHead(config.hidden_size, config.vocab_size, tp().attn)
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        logits = F.linear(hidden, head.weight)
        return gather_logits(logits, self.config.vocab_size, head.group).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF tensors; V3's multi-token-prediction layers (stored after the last
        layer, ``num_nextn_predict_layers`` of them) are skipped, as transformers does."""
        cfg = self.config
        mtp = range(cfg.num_hidden_layers, cfg.num_hidden_layers + cfg.num_nextn_predict_layers)

        def kept():
            for name, tensor in weights:
                layer = _LAYER.match(name)
                if layer is None or int(layer.group(1)) not in mtp:
                    yield name, tensor

        ignore = ("lm_head.weight",) if self.lm_head is None else ()
        load_hf_weights(self, kept(), ignore=ignore)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    """Same network; the config carries V3's router and rotary choices."""
