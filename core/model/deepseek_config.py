"""DeepSeek-V2/V3 config sections: multi-head latent attention (MLA) and routed experts (MoE).

Parsed from HF ``config.json`` the way transformers' ``DeepseekV2``/``DeepseekV3``
models read them, so the same checkpoint computes the same numbers here. Where
transformers hard-codes a choice per architecture (V2: softmax routing, V3:
sigmoid scores with a bias and group-limited top-k), a config that asks for
something else is refused instead of silently computed differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

V2 = "DeepseekV2ForCausalLM"
V3 = "DeepseekV3ForCausalLM"

# (scoring function, top-k method) pairs the router implements.
ROUTING = {
    ("softmax", "greedy"),
    ("softmax", "group_limited_greedy"),
    ("sigmoid", "noaux_tc"),
}


@dataclass(frozen=True)
class MLAConfig:
    """Low-rank query/KV projections; the cache keeps the latent (R) and rope key (P) per token."""

    kv_lora_rank: int  # R
    qk_nope_head_dim: int
    qk_rope_head_dim: int  # P
    v_head_dim: int
    q_lora_rank: int | None = None  # None: one q_proj instead of q_a/q_b
    rope_interleave: bool = True  # rotary pairs are (x0, x1), (x2, x3), ...

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @classmethod
    def from_hf(cls, cfg: dict) -> MLAConfig:
        q_rank = cfg.get("q_lora_rank")
        return cls(
            kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
            qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
            v_head_dim=int(cfg["v_head_dim"]),
            q_lora_rank=int(q_rank) if q_rank else None,
            # V2's complex-number rotary is the interleaved form; V3 makes it a flag.
            rope_interleave=bool(cfg.get("rope_interleave", True)),
        )

    def softmax_scale(self, rope_scaling: dict | None) -> float:
        """``qk_head_dim ** -0.5``, times YaRN's ``mscale(factor, mscale_all_dim) ** 2``
        when the rope scaling has ``mscale_all_dim`` (transformers' ``yarn_apply_mscale``)."""
        scale = self.qk_head_dim**-0.5
        params = rope_scaling or {}
        mscale_all_dim = params.get("mscale_all_dim")
        if mscale_all_dim:
            if "factor" not in params:
                raise ValueError("rope scaling with 'mscale_all_dim' needs 'factor'")
            factor = float(params["factor"])
            mscale = 1.0 if factor <= 1 else 0.1 * mscale_all_dim * math.log(factor) + 1.0
            scale *= mscale * mscale
        return scale


@dataclass(frozen=True)
class MoEConfig:
    """Routed experts (top-k of ``n_routed_experts``) plus always-on shared experts."""

    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    n_shared_experts: int = 0
    first_k_dense_replace: int = 0  # layers before this one keep a dense MLP
    moe_layer_freq: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1

    def __post_init__(self):
        if (self.scoring_func, self.topk_method) not in ROUTING:
            raise ValueError(
                f"unsupported MoE routing scoring_func={self.scoring_func!r} "
                f"topk_method={self.topk_method!r}; supported: {sorted(ROUTING)}"
            )
        if not 0 < self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be in "
                f"1..n_routed_experts ({self.n_routed_experts})"
            )
        if self.topk_method != "greedy":
            if self.n_routed_experts % self.n_group or not 0 < self.topk_group <= self.n_group:
                raise ValueError(
                    f"{self.n_routed_experts} experts do not split into n_group={self.n_group} "
                    f"groups with topk_group={self.topk_group}"
                )
            if self.topk_method == "noaux_tc" and self.n_routed_experts // self.n_group < 2:
                raise ValueError("noaux_tc routing scores groups by their top 2: need 2+ per group")

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.first_k_dense_replace and layer_id % self.moe_layer_freq == 0

    @classmethod
    def from_hf(cls, cfg: dict, architecture: str) -> MoEConfig:
        if architecture == V3:
            # transformers' V3 router: sigmoid scores + e_score_correction_bias, top-2
            # group sums, optional renormalization; config keys saying otherwise are refused.
            scoring, method = "sigmoid", "noaux_tc"
            norm = bool(cfg.get("norm_topk_prob", True))
        else:
            scoring, method = "softmax", cfg.get("topk_method") or "greedy"
            # transformers' V2 router never renormalizes (real V2 configs say false).
            norm = False
        asked = (cfg.get("scoring_func") or scoring, cfg.get("topk_method") or method)
        if asked != (scoring, method):
            raise ValueError(
                f"{architecture} routes with scoring_func={scoring!r}, topk_method={method!r}; "
                f"config.json asks for {asked[0]!r}, {asked[1]!r}"
            )
        return cls(
            n_routed_experts=int(cfg["n_routed_experts"]),
            num_experts_per_tok=int(cfg["num_experts_per_tok"]),
            moe_intermediate_size=int(cfg["moe_intermediate_size"]),
            n_shared_experts=int(cfg.get("n_shared_experts") or 0),
            first_k_dense_replace=int(cfg.get("first_k_dense_replace") or 0),
            moe_layer_freq=int(cfg.get("moe_layer_freq") or 1),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
            norm_topk_prob=norm,
            scoring_func=scoring,
            topk_method=method,
            n_group=int(cfg.get("n_group") or 1),
            topk_group=int(cfg.get("topk_group") or 1),
        )
