"""``--load-format dummy``: the architecture from config.json with seeded random weights."""

from __future__ import annotations

import pytest
import torch
from model.model_helpers import make_checkpoint

from pdcore.model.loader import ModelLoadError, load_model


def test_dummy_weights_are_random_seeded_by_name_and_need_no_checkpoint(tmp_path):
    make_checkpoint(tmp_path, "qwen3")
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()  # only config.json (and the tokenizer, unused here) remain
    a = load_model(str(tmp_path), torch.float32, "cpu", load_tokenizer=False, load_format="dummy")
    b = load_model(str(tmp_path), torch.float32, "cpu", load_tokenizer=False, load_format="dummy")
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    q = "model.layers.0.self_attn.qkv_proj.weight"
    assert torch.equal(pa[q], pb[q]), "the same name must give the same values"
    assert 0.015 < pa[q].std().item() < 0.025, f"std {pa[q].std().item():.4f}, expected ~0.02"
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(pa[norm], torch.ones_like(pa[norm]))
    logits = a.model.compute_logits(torch.randn(2, a.config.hidden_size))
    assert torch.isfinite(logits).all()


def test_dummy_needs_an_hf_config(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="needs an HF folder"):
        load_model(str(tmp_path / "model.gguf"), load_format="dummy")
