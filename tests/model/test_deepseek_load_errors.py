"""A DeepSeek checkpoint with a wrong expert or router tensor fails naming that tensor;
DeepSeek-V3's multi-token-prediction layers are skipped, nothing else is."""

from __future__ import annotations

import json

import pytest
import torch
from model.model_helpers import make_checkpoint
from safetensors.torch import load_file, save_file

from pdcore.model.loader import ModelLoadError, load_model

EXPERT = "model.layers.1.mlp.experts.5.up_proj.weight"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepseek_v3")
    make_checkpoint(folder, "deepseek_v3", q_lora_rank=24)
    return folder


def _copy(checkpoint, tmp_path, edit=None, config=None):
    """A copy of the checkpoint with its tensors (and config dict) edited."""
    tmp_path.mkdir(exist_ok=True)
    raw = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **(config or {})}))
    tensors = load_file(checkpoint / "model.safetensors")
    if edit:
        edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return str(tmp_path)


def _load(path):
    return load_model(path, torch.float32, "cpu", load_tokenizer=False)


def test_missing_expert_tensor_is_named(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path, lambda t: t.pop(EXPERT))
    with pytest.raises(ModelLoadError, match=f"missing tensor.*{EXPERT}"):
        _load(path)


def test_missing_router_bias_is_named(checkpoint, tmp_path):
    name = "model.layers.2.mlp.gate.e_score_correction_bias"
    path = _copy(checkpoint, tmp_path, lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=f"missing tensor.*{name}"):
        _load(path)


def test_wrong_shape_expert_tensor_is_named(checkpoint, tmp_path):
    def edit(t):
        t[EXPERT] = t[EXPERT][:, :-1].contiguous()

    with pytest.raises(ModelLoadError, match=f"{EXPERT}.*shape"):
        _load(_copy(checkpoint, tmp_path, edit))


def test_expert_beyond_n_routed_experts_is_unexpected(checkpoint, tmp_path):
    extra = "model.layers.1.mlp.experts.8.gate_proj.weight"

    def edit(t):
        t[extra] = t["model.layers.1.mlp.experts.0.gate_proj.weight"].clone()

    with pytest.raises(ModelLoadError, match=f"unexpected tensor '{extra}'"):
        _load(_copy(checkpoint, tmp_path, edit))


def test_mtp_layer_is_skipped_but_other_extra_layers_are_not(checkpoint, tmp_path):
    """3 layers + 1 MTP layer: model.layers.3.* loads as nothing, model.layers.4.* fails."""
    mtp = "model.layers.3.eh_proj.weight"

    def edit(t):
        t[mtp] = torch.zeros(64, 128)

    path = _copy(checkpoint, tmp_path / "ok", edit, {"num_nextn_predict_layers": 1})
    loaded = _load(path)
    assert len(loaded.model.model.layers) == 3
    stray = "model.layers.4.input_layernorm.weight"

    def edit_stray(t):
        t[stray] = torch.ones(64)

    path = _copy(checkpoint, tmp_path / "bad", edit_stray, {"num_nextn_predict_layers": 1})
    with pytest.raises(ModelLoadError, match=f"unexpected tensor '{stray}'"):
        _load(path)
