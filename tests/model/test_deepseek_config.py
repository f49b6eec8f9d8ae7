"""DeepSeek config.json parsing: MLA/MoE fields, routing checks, KV cache spec, softmax scale."""

from __future__ import annotations

import math

import pytest

from pdcore.model.config import ModelConfig
from pdcore.model.deepseek_config import MoEConfig

# The published DeepSeek-V3 config.json (the fields pdcore reads).
V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "num_experts_per_tok": 8,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 3,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "max_position_embeddings": 163840,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
}
# The published DeepSeek-V2-Lite config.json (no q LoRA, greedy softmax routing).
V2_LITE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "vocab_size": 102400,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_shared_experts": 2,
    "n_routed_experts": 64,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "num_experts_per_tok": 6,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 1,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "max_position_embeddings": 163840,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
}


def test_v3_config_parses_mla_moe_and_mtp():
    cfg = ModelConfig.from_hf(V3_CONFIG)
    assert cfg.is_mla and cfg.head_dim == 64  # the rotary width, as transformers sets it
    assert (cfg.mla.q_lora_rank, cfg.mla.kv_lora_rank, cfg.mla.qk_head_dim) == (1536, 512, 192)
    moe = cfg.moe
    assert (moe.scoring_func, moe.topk_method, moe.norm_topk_prob) == ("sigmoid", "noaux_tc", True)
    assert (moe.n_group, moe.topk_group, moe.routed_scaling_factor) == (8, 4, 2.5)
    assert not moe.is_moe_layer(2) and moe.is_moe_layer(3)
    assert cfg.num_nextn_predict_layers == 1
    assert cfg.rope_scaling["rope_type"] == "yarn"
    spec = cfg.kv_cache_spec()
    assert (spec.kind, spec.num_kv_heads, spec.head_dim, spec.latent_rank) == ("mla", 1, 576, 512)
    mscale = 0.1 * math.log(40) + 1.0
    assert spec.softmax_scale == pytest.approx(192**-0.5 * mscale**2)


def test_v2_lite_config_parses_without_q_lora():
    cfg = ModelConfig.from_hf(V2_LITE_CONFIG)
    assert cfg.mla.q_lora_rank is None and cfg.mla.rope_interleave
    assert (cfg.moe.scoring_func, cfg.moe.topk_method) == ("softmax", "greedy")
    assert cfg.moe.n_shared_experts == 2 and cfg.num_nextn_predict_layers == 0


def test_softmax_scale_matches_transformers_yarn_mscale():
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import yarn_apply_mscale

    for scaling in (None, {"rope_type": "yarn", "factor": 40.0, "mscale_all_dim": 0.707}):
        cfg = ModelConfig.from_hf({**V2_LITE_CONFIG, "rope_scaling": scaling})
        params = {"rope_type": "default"} if scaling is None else scaling
        assert cfg.kv_cache_spec().softmax_scale == pytest.approx(
            yarn_apply_mscale(params, 192**-0.5), rel=1e-12
        )


def test_mha_config_keeps_k_and_v_rows():
    cfg = ModelConfig.from_hf(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 10,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        }
    )
    spec = cfg.kv_cache_spec()
    assert not cfg.is_mla and cfg.moe is None
    assert (spec.kind, spec.num_kv_heads, spec.head_dim, spec.softmax_scale) == ("mha", 2, 16, None)


@pytest.mark.parametrize(
    ("arch", "override", "fragment"),
    [
        ("DeepseekV3ForCausalLM", {"scoring_func": "softmax"}, "scoring_func='sigmoid'"),
        ("DeepseekV3ForCausalLM", {"topk_method": "greedy"}, "topk_method='noaux_tc'"),
        ("DeepseekV2ForCausalLM", {"scoring_func": "sigmoid"}, "scoring_func='softmax'"),
        ("DeepseekV2ForCausalLM", {"topk_method": "noaux_tc"}, "unsupported MoE routing"),
        ("DeepseekV2ForCausalLM", {"topk_method": "group_limited_greedy", "n_group": 5}, "groups"),
        ("DeepseekV3ForCausalLM", {"num_experts_per_tok": 300}, "num_experts_per_tok 300"),
    ],
)
def test_routing_transformers_does_not_compute_is_refused(arch, override, fragment):
    base = V3_CONFIG if arch.startswith("DeepseekV3") else V2_LITE_CONFIG
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        ModelConfig.from_hf({**base, **override})


def test_moe_layer_frequency_and_dense_prefix():
    moe = MoEConfig(8, 2, 32, first_k_dense_replace=2, moe_layer_freq=2)
    assert [moe.is_moe_layer(i) for i in range(6)] == [False, False, True, False, True, False]


def test_check_config_picks_the_mla_backend_for_a_deepseek_checkpoint(tmp_path, capsys):
    """--check-config reads the model's config: an MLA model resolves to torch_mla."""
    import json

    from model.model_helpers import make_checkpoint

    from pdcore.launch_server import run

    make_checkpoint(tmp_path, "deepseek_v3")
    assert run(["--model-path", str(tmp_path), "--check-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["attention_backend"] == "torch_mla", resolved["attention_backend"]
