"""RoPE variants match transformers bit for bit: frequencies, scaling and cos/sin."""

from __future__ import annotations

import pytest
import torch
from model.model_helpers import hf_config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from pdcore.model.config import ModelConfig
from pdcore.model.rotary import RotaryEmbedding, apply_rotary

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 500000.0,
    },
    "yarn": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 1000000.0,
    },
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 40.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "beta_fast": 16,
        "original_max_position_embeddings": 64,
        "rope_theta": 10000.0,
    },
}


def _pair(name: str, max_pos: int = 256):
    """(pdcore rotary, HF config) for one rope setting, via pdcore's config parser."""
    hf = hf_config("llama", rope_parameters=dict(ROPES[name]), max_position_embeddings=max_pos)
    raw = {**hf.to_dict(), "architectures": ["LlamaForCausalLM"]}
    cfg = ModelConfig.from_hf(raw)
    ours = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_pos)
    return ours, hf


@pytest.mark.parametrize("name", list(ROPES))
def test_inv_freq_and_scaling_match_transformers(name):
    ours, hf = _pair(name)
    rope_type = ROPES[name]["rope_type"]
    if rope_type == "default":
        ref, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    else:
        ref, scale = ROPE_INIT_FUNCTIONS[rope_type](hf, torch.device("cpu"))
    assert torch.equal(ours.inv_freq, ref)
    assert ours.attention_scaling == scale


@pytest.mark.parametrize("name", list(ROPES))
def test_cos_sin_match_transformers_at_arbitrary_positions(name):
    ours, hf = _pair(name)
    positions = torch.tensor([0, 5, 1, 200, 37, 255, 3], dtype=torch.int64)
    cos, sin = ours.cos_sin(positions)
    ref_cos, ref_sin = LlamaRotaryEmbedding(hf)(
        torch.zeros(1, dtype=torch.float32), positions[None]
    )
    assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0])


def test_dynamic_beyond_max_positions_matches_transformers_decode_steps():
    """Past max_position_embeddings HF rescales the base from the step's length;
    one position per step is what its cached decoding does."""
    ours, hf = _pair("dynamic", max_pos=16)
    hf_rope = LlamaRotaryEmbedding(hf)
    for pos in (15, 16, 17, 40):
        p = torch.tensor([pos])
        ref_cos, ref_sin = hf_rope(torch.zeros(1), p[None])
        cos, sin = ours.cos_sin(p)
        assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0]), pos


def test_rotation_matches_transformers_apply_rotary():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ours, _ = _pair("llama3")
    positions = torch.arange(7)
    q, k = torch.randn(7, 4, 16), torch.randn(7, 2, 16)
    cos, sin = ours.cos_sin(positions)
    ref_q, ref_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]
    )
    assert torch.equal(apply_rotary(q, cos, sin), ref_q[0].transpose(0, 1))
    assert torch.equal(apply_rotary(k, cos, sin), ref_k[0].transpose(0, 1))


def test_old_style_rope_scaling_config_is_understood():
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 8,
        "hidden_size": 64,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "rope_theta": 500000.0,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }
    cfg = ModelConfig.from_hf(raw)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    raw["rope_scaling"] = {"rope_type": "default"}
    assert ModelConfig.from_hf(raw).rope_scaling is None


def test_unsupported_rope_type_is_named():
    with pytest.raises(ValueError, match="Unsupported rope scaling type 'longrope'"):
        RotaryEmbedding(16, 10000.0, {"rope_type": "longrope"})
