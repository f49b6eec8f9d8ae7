"""The interface between model files and the model runner.

A model computes hidden states for a flat batch of new tokens (all requests'
tokens concatenated, T of them) at given positions. Attention goes through the
``AttentionImpl`` that the runner planned for this pass; layer ``i`` reads and
writes ``kv_caches[i]`` (K and V tensors of the paged pool).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from pdcore.attention.base import AttentionImpl
from pdcore.model.config import ModelConfig
from pdcore.model.kernels import TORCH_KERNELS, LayerKernels


@dataclass
class ForwardContext:
    attn: AttentionImpl  # already planned for this batch
    # per layer (k_cache, v_cache); MLA: (latent, rope key) views of one tensor
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    kernels: LayerKernels = TORCH_KERNELS  # norms, rotary, activation (fused on GPUs)
    # DP attention: every DP group's token counts (``pdcore.distributed.dp_attention``)
    dp: object = None


class CausalLM(nn.Module, ABC):
    """Base class of model families; see ``pdcore.model.llama`` for the shape."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @abstractmethod
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """``input_ids``, ``positions``: int64 ``[T]``; returns hidden ``[T, hidden_size]``."""

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden ``[N, hidden_size]`` (final-normed rows to sample) -> float32 logits."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load tensors named as in the HF checkpoint; unknown names are an error."""
