"""``ModelConfig``: the architecture facts the engine needs, from HF config.json or GGUF."""

from __future__ import annotations

from dataclasses import dataclass, field

from pdcore.model.deepseek_config import MLAConfig, MoEConfig


def parse_rope(cfg: dict) -> tuple[float, dict | None]:
    """``(rope_theta, scaling)`` from a config dict, old or new transformers style.

    transformers 5 writes ``rope_parameters`` (theta inside); older configs have
    ``rope_theta`` plus ``rope_scaling`` keyed by ``type`` or ``rope_type``.
    ``scaling`` is None for plain RoPE, else a dict with ``rope_type`` normalized.
    """
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **params}


@dataclass(frozen=True)
class KVCacheSpec:
    """One token's row in one layer of the KV pool, and how attention reads it.

    MHA/GQA: separate K and V rows of ``num_kv_heads x head_dim``. MLA
    (``latent_rank`` R > 0): one shared row ``[latent (R) | rope key]`` of
    ``head_dim`` = R + rope dims, and queries of the same width (absorbed form).
    """

    num_kv_heads: int
    head_dim: int
    latent_rank: int = 0
    softmax_scale: float | None = None  # None: head_dim ** -0.5

    @property
    def kind(self) -> str:
        """The attention backend's ``KVLayout.kind`` this cache needs."""
        return "mla" if self.latent_rank else "mha"


@dataclass
class ModelConfig:
    architecture: str  # HF class name, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None = plain RoPE; else {"rope_type": ..., params}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k per head
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None
    mlp_bias: bool = False  # Llama option: bias on gate/up/down
    sliding_window: int | None = None  # Mistral v0.1: attention window (not implemented)
    mla: MLAConfig | None = None  # DeepSeek-V2/V3 latent attention
    moe: MoEConfig | None = None  # DeepSeek-V2/V3 routed + shared experts
    num_nextn_predict_layers: int = 0  # DeepSeek-V3 MTP layers after the last one (unused)

    @property
    def is_mla(self) -> bool:
        return self.mla is not None

    def kv_cache_spec(self) -> KVCacheSpec:
        """What the engine sizes the KV pool and attention backend by."""
        if self.mla is None:
            return KVCacheSpec(self.num_key_value_heads, self.head_dim)
        m = self.mla
        return KVCacheSpec(
            num_kv_heads=1,  # one latent row per token, shared by every query head
            head_dim=m.kv_lora_rank + m.qk_rope_head_dim,
            latent_rank=m.kv_lora_rank,
            softmax_scale=m.softmax_scale(self.rope_scaling),
        )

    @property
    def max_context_len(self) -> int:
        """Longest sequence served exactly: attention here is always full, so a model
        trained with a sliding window matches its reference only within the window."""
        if self.sliding_window:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelConfig:
        """Parse a HF ``config.json`` dict; missing required fields raise ValueError."""
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError("config.json has no 'architectures' entry")
        arch = archs[0]
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            eos = cfg.get("eos_token_id")
            rope_theta, rope_scaling = parse_rope(cfg)
            window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
            mla = MLAConfig.from_hf(cfg) if cfg.get("kv_lora_rank") else None
            moe = MoEConfig.from_hf(cfg, arch) if cfg.get("n_routed_experts") else None
            # MLA's head_dim is the rotary width, as transformers' DeepSeek configs set it.
            head_dim = mla.qk_rope_head_dim if mla else cfg.get("head_dim") or hidden // heads
            return cls(
                architecture=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(head_dim),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=bool(cfg.get("attention_bias", arch.startswith("Qwen2"))),
                qk_norm=arch.startswith("Qwen3"),
                hidden_act=str(cfg.get("hidden_act", "silu")),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
                torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                sliding_window=int(window) if window else None,
                mla=mla,
                moe=moe,
                num_nextn_predict_layers=int(cfg.get("num_nextn_predict_layers") or 0),
            )
        except KeyError as e:
            raise ValueError(f"config.json is missing {e.args[0]!r}") from None
