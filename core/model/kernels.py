"""Element-wise layer kernels the models call: torch by default, fused from a platform.

Between the matmuls of a decoder layer sit norms, rotary and the gated
activation; in plain torch they are ~40 tiny kernels per layer, which dominate a
small-batch decode step on a GPU. Models call them through ``LayerKernels``; the
torch versions here reproduce transformers' op order exactly (CPU numerics stay
bit-equal to HF), and a platform may hand the engine fused versions
(``Platform.layer_kernels``) that compute the same values in one launch each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdcore.model.rotary import apply_rotary


class LayerKernels:
    """Reference implementations; subclasses override with fused kernels."""

    name = "torch"

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x @ weight.T + bias``: a platform may pick its own kernel per shape."""
        return F.linear(x, weight, bias)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMS norm over the last dim in float32, scaled after casting back (HF's order)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(residual + x), residual + x)``: the residual add and the next norm."""
        total = residual + x
        return self.rms_norm(total, weight, eps), total

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` ``[T, H, D]`` and ``k`` ``[T, KVH, D]`` by float32 ``cos``/``sin``."""
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` for ``gate_up`` = ``[T, 2 * I]`` (gate first)."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


TORCH_KERNELS = LayerKernels()
