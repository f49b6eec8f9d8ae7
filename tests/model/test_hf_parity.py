"""pdcore models vs transformers on tiny random checkpoints of every family.

Each checkpoint goes through ``load_model`` (config.json + safetensors, one of
them sharded) and runs over the paged KV cache with the torch attention
backend; logits and greedy continuations must match transformers (float32,
eager attention).
"""

from __future__ import annotations

import pytest
import torch
from model.model_helpers import hf_greedy, hf_logits, make_checkpoint

from pdcore.model.loader import load_model
from pdcore.model.reference_runner import greedy_generate, prompt_logits

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_theta": 500000.0,
}
CASES = {
    "llama": dict(family="llama"),
    "llama-biases": dict(family="llama", attention_bias=True, mlp_bias=True),
    "llama3-rope-tied": dict(family="llama", rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
    "llama-yarn": dict(
        family="llama",
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama-linear": dict(family="llama", rope_parameters={"rope_type": "linear", "factor": 2.0}),
    # Decoding runs past max_position_embeddings, where the NTK base changes per step.
    "llama-dynamic": dict(
        family="llama",
        rope_parameters={"rope_type": "dynamic", "factor": 2.0},
        max_position_embeddings=24,
    ),
    "mistral-sharded": dict(family="mistral", max_shard_size="100KB"),
    "qwen2": dict(family="qwen2"),
    "qwen3-tied": dict(family="qwen3", tie_word_embeddings=True),
}
PROMPT = [3, 17, 250, 9, 101, 44, 7, 300, 12, 12, 480, 5, 66, 2, 190, 23]
TOL = 1e-4


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(pdcore LoadedModel, transformers model) of one case."""
    folder = tmp_path_factory.mktemp(request.param)
    spec = dict(CASES[request.param])
    hf = make_checkpoint(folder, spec.pop("family"), **spec)
    return load_model(str(folder), torch.float32, "cpu", load_tokenizer=False), hf


def test_prompt_logits_match(pair):
    ours, hf = pair
    got = prompt_logits(ours.model, PROMPT)
    want = hf_logits(hf, PROMPT)
    assert got.dtype == torch.float32 and got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"max abs logit diff {diff:.2e}"


def test_chunked_prefill_matches_one_pass(pair):
    """Later chunks attend to earlier ones through the paged cache."""
    ours, _ = pair
    whole = prompt_logits(ours.model, PROMPT, page_size=4)
    chunked = prompt_logits(ours.model, PROMPT, page_size=3, prefill_chunk=5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches(pair):
    ours, hf = pair
    assert greedy_generate(ours.model, PROMPT, 20) == hf_greedy(hf, PROMPT, 20)


def test_config_matches_checkpoint(pair):
    ours, hf = pair
    cfg = ours.config
    assert cfg.architecture == type(hf).__name__
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    assert (ours.model.lm_head is None) == cfg.tie_word_embeddings
    assert cfg.num_key_value_heads == 2 and cfg.head_dim == 16


def test_bfloat16_load_tracks_float32(tmp_path):
    hf = make_checkpoint(tmp_path, "qwen3", seed=1)
    ours = load_model(str(tmp_path), torch.bfloat16, "cpu", load_tokenizer=False)
    assert all(p.dtype == torch.bfloat16 for p in ours.model.parameters())
    got = prompt_logits(ours.model, PROMPT)
    want = hf_logits(hf, PROMPT)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()
