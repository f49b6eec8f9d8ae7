"""DeepSeek mixture of experts: a top-k router, routed experts and shared experts.

Numerics follow transformers' ``DeepseekV2Moe`` / ``DeepseekV3MoE``: the router
runs in float32 (its weights stay float32 whatever the model dtype), each token's
expert outputs are weighted and summed expert by expert, and the shared experts
are added last. Experts run as plain per-expert matmuls over the tokens routed
to them (no fused kernels): simple and exact, not fast.

Tensor parallelism: every expert's gate/up rows and down columns split over the
ranks (as a dense MLP's), the router is replicated, and the routed and shared
partial sums take one all-reduce together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pdcore.distributed.state import all_reduce
from pdcore.model.config import ModelConfig
from pdcore.model.deepseek_config import MoEConfig
from pdcore.model.kernels import TORCH_KERNELS, LayerKernels
from pdcore.model.layers import GatedMLP


class TopKRouter(nn.Module):
    """Scores experts per token; returns float32 weights and int64 ids ``[T, top_k]``."""

    def __init__(self, hidden_size: int, moe: MoEConfig):
        super().__init__()
        self.moe = moe
        self.weight = nn.Parameter(torch.empty(moe.n_routed_experts, hidden_size))
        if moe.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.empty(moe.n_routed_experts))

    def _apply(self, fn: Callable, recurse: bool = True):
        """Keep float32 through ``model.to(dtype)``, as transformers keeps ``gate.*``."""
        return super()._apply(lambda t: fn(t).float(), recurse)

    def _group_mask(self, group_scores: torch.Tensor) -> torch.Tensor:
        """``[T, experts]`` True for experts in each token's ``topk_group`` best groups."""
        m = self.moe
        best = torch.topk(group_scores, k=m.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, best, 1).bool()
        return mask.repeat_interleave(m.n_routed_experts // m.n_group, dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.moe
        logits = F.linear(x.float(), self.weight.float())
        if m.scoring_func == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1, dtype=torch.float32)
        grouped = (-1, m.n_group, m.n_routed_experts // m.n_group)
        if m.topk_method == "noaux_tc":  # pick by biased scores, weigh by plain ones
            choice = scores + self.e_score_correction_bias
            group_scores = choice.view(grouped).topk(2, dim=-1)[0].sum(dim=-1)
            choice = choice.masked_fill(~self._group_mask(group_scores), float("-inf"))
            ids = torch.topk(choice, k=m.num_experts_per_tok, dim=-1, sorted=False)[1]
            weights = scores.gather(1, ids)
        else:
            if m.topk_method == "group_limited_greedy":
                group_scores = scores.view(grouped).max(dim=-1).values
                scores = scores.masked_fill(~self._group_mask(group_scores), 0.0)
            weights, ids = torch.topk(scores, k=m.num_experts_per_tok, dim=-1, sorted=False)
        if m.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * m.routed_scaling_factor, ids


def partial_mlp(mlp: GatedMLP, x: torch.Tensor, kernels: LayerKernels) -> torch.Tensor:
    """This rank's share of ``mlp(x)``: before the all-reduce and the down bias."""
    return F.linear(kernels.silu_and_mul(mlp.gate_up_proj(x)), mlp.down_proj.weight)


class MoE(nn.Module):
    """``sum_k w_k * expert_k(x) + shared(x)`` (HF names: ``gate``, ``experts.N``,
    ``shared_experts``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe, hidden, act = config.moe, config.hidden_size, config.hidden_act
        self.gate = TopKRouter(hidden, moe)
        self.experts = nn.ModuleList(
            GatedMLP(hidden, moe.moe_intermediate_size, False, act)
            for _ in range(moe.n_routed_experts)
        )
        self.shared_experts = (
            GatedMLP(hidden, moe.moe_intermediate_size * moe.n_shared_experts, config.mlp_bias, act)
            if moe.n_shared_experts
            else None
        )

    def forward(self, x: torch.Tensor, kernels: LayerKernels = TORCH_KERNELS) -> torch.Tensor:
        weights, ids = self.gate(x)
        out = torch.zeros_like(x)
        counts = torch.bincount(ids.flatten(), minlength=len(self.experts)).tolist()
        for e, count in enumerate(counts):
            if not count:
                continue
            tokens, slot = torch.where(ids == e)
            y = partial_mlp(self.experts[e], x[tokens], kernels) * weights[tokens, slot, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        shared = self.shared_experts
        if shared is not None:
            out = out + partial_mlp(shared, x, kernels)
        out = all_reduce(out)
        if shared is not None and shared.down_proj.bias is not None:
            out = out + shared.down_proj.bias
        return out
