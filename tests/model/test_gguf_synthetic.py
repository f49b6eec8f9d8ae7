"""GGUF loading against transformers, on tiny files written here the way llama.cpp
writes them: tensor names, Llama Q/K permutation, quantized types, tied output,
Llama 3 ``rope_freqs``. The reference is the HF model the file was made from."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from model.model_helpers import hf_logits, make_checkpoint, write_gguf

from pdcore.model.loader import load_model, load_model_config
from pdcore.model.reference_runner import prompt_logits

PROMPT = [5, 99, 300, 41, 7, 7, 250, 18, 400, 3, 61, 2]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_theta": 500000.0,
}
CASES = {
    "llama-q8_0-rope_freqs": (
        "llama",
        GGMLQuantizationType.Q8_0,
        dict(rope_parameters=LLAMA3_ROPE),
    ),
    "qwen2-f16": ("qwen2", GGMLQuantizationType.F16, {}),
    "qwen3-bf16-tied": ("qwen3", GGMLQuantizationType.BF16, dict(tie_word_embeddings=True)),
}


def llama3_freq_factors(hf_model) -> list[float]:
    """What llama.cpp stores: plain RoPE frequency / Llama 3 frequency, per pair."""
    cfg = hf_model.config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    dim = cfg.hidden_size // cfg.num_attention_heads
    base = cfg.rope_parameters["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return (plain / scaled.double()).tolist()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    family, matrix_type, overrides = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_checkpoint(folder / "hf", family, seed=3, **overrides)
    freqs = llama3_freq_factors(hf) if "rope_parameters" in overrides else None
    path = folder / "model.gguf"
    write_gguf(path, hf, family, matrix_type, rope_freqs=freqs)
    return path, hf


def test_gguf_logits_match_transformers(case):
    path, hf = case
    ours = load_model(str(path), torch.float32, "cpu", load_tokenizer=False)
    diff = (prompt_logits(ours.model, PROMPT) - hf_logits(hf, PROMPT)).abs().max().item()
    assert diff < 1e-4, f"max abs logit diff {diff:.2e}"


def test_gguf_config_from_metadata(case):
    path, hf = case
    cfg = load_model_config(str(path))
    assert cfg.architecture == type(hf).__name__
    assert cfg.num_hidden_layers == 2 and cfg.num_key_value_heads == 2 and cfg.head_dim == 16
    assert cfg.vocab_size == hf.config.vocab_size
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    assert cfg.eos_token_ids == [hf.config.vocab_size - 1]


def test_folder_with_one_gguf_loads_it(case):
    path, _ = case
    assert load_model_config(str(path.parent)).architecture
