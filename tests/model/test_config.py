"""``ModelConfig`` parsing details that the parity tests do not reach."""

from __future__ import annotations

import json

from model.model_helpers import hf_config

from pdcore.model.config import ModelConfig
from pdcore.model.loader import load_model_config
from pdcore.model.registry import get_model_class, supported_architectures


def _raw(family: str, **overrides) -> dict:
    cfg = hf_config(family, **overrides)
    arch = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    return {**cfg.to_dict(), "architectures": [f"{arch}ForCausalLM"]}


def test_family_flags():
    qwen2 = ModelConfig.from_hf(_raw("qwen2"))
    assert qwen2.attention_bias and not qwen2.qk_norm and qwen2.head_dim == 16
    qwen3 = ModelConfig.from_hf(_raw("qwen3"))
    assert qwen3.qk_norm and not qwen3.attention_bias
    llama = ModelConfig.from_hf(_raw("llama", attention_bias=True, mlp_bias=True))
    assert llama.attention_bias and llama.mlp_bias


def test_sliding_window_caps_the_exact_context():
    mistral = ModelConfig.from_hf(_raw("mistral", sliding_window=64))
    assert mistral.sliding_window == 64 and mistral.max_context_len == 64
    qwen2 = ModelConfig.from_hf(_raw("qwen2", sliding_window=64, use_sliding_window=False))
    assert qwen2.sliding_window is None and qwen2.max_context_len == 256


def test_generation_config_eos_ids_are_merged(tmp_path):
    raw = _raw("llama")
    raw["eos_token_id"] = 5
    (tmp_path / "config.json").write_text(json.dumps(raw))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 9, 7]}))
    assert load_model_config(str(tmp_path)).eos_token_ids == [5, 7, 9]


def test_registry_lists_every_family():
    assert supported_architectures() == [
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    ]
    assert get_model_class("Qwen3ForCausalLM").__name__ == "Qwen3ForCausalLM"
