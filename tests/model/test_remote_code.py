"""--trust-remote-code changes nothing: pdcore never runs code shipped in a model
folder. A checkpoint whose architecture is not built in fails naming it; the
tokenizer is loaded with trust_remote_code=False even where transformers would ask."""

from __future__ import annotations

import argparse
import builtins
import json

import pytest
from model.model_helpers import make_checkpoint

from pdcore.config import ServerArgs
from pdcore.model.loader import ModelLoadError, load_model_config
from pdcore.model.tokenizer import Tokenizer

CUSTOM = "MyCustomForCausalLM"


def custom_code_folder(folder, marker, config: dict) -> None:
    """A folder whose auto_map names Python files that leave ``marker`` if ever run."""
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("configuration_my.py", "modeling_my.py", "tokenization_my.py"):
        (folder / name).write_text(code)
    (folder / "config.json").write_text(json.dumps(config))


def test_architecture_needing_custom_code_fails_naming_it(tmp_path):
    marker = tmp_path / "ran"
    custom_code_folder(
        tmp_path,
        marker,
        {
            "architectures": [CUSTOM],
            "model_type": "my_custom",
            "auto_map": {"AutoModelForCausalLM": "modeling_my.MyModel"},
            "n_embd": 64,  # its own field names: the config would not parse
            "vocab_size": 100,
        },
    )
    with pytest.raises(ModelLoadError) as err:
        load_model_config(str(tmp_path))
    message = str(err.value)
    assert f"Unsupported architecture {CUSTOM!r}" in message and "auto_map" in message, message
    assert "never runs code" in message and "--trust-remote-code" in message, message
    assert not marker.exists(), "code from the model folder ran"


def test_unknown_architecture_without_custom_code_fails_naming_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [CUSTOM], "n_embd": 64}))
    with pytest.raises(ModelLoadError) as err:
        load_model_config(str(tmp_path))
    assert f"Unsupported architecture {CUSTOM!r}" in str(err.value), str(err.value)


def test_built_in_architecture_with_auto_map_loads_with_its_built_in_class(tmp_path):
    """DeepSeek-V3's config.json has an auto_map too: the built-in class serves it."""
    make_checkpoint(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_my.MyModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model_config(str(tmp_path)).architecture == "LlamaForCausalLM"


def test_tokenizer_never_runs_folder_code_even_when_the_prompt_says_yes(tmp_path, monkeypatch):
    """Left to decide, transformers asks on the terminal whether to run the code."""
    marker = tmp_path / "ran"
    custom_code_folder(tmp_path, marker, {"architectures": ["LlamaForCausalLM"]})
    tokenizer_config = {
        "tokenizer_class": "MyTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_my.MyTokenizer", None]},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    monkeypatch.setattr(builtins, "input", lambda *_: "y")
    with pytest.raises(ValueError, match="custom code"):
        Tokenizer.from_pretrained(str(tmp_path))
    assert not marker.exists(), "the tokenizer ran code from the model folder"


def test_trust_remote_code_help_says_what_it_does():
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    (action,) = [a for a in parser._actions if "--trust-remote-code" in a.option_strings]
    text = " ".join(action.help.split())
    assert "no effect" in text and "never runs code from the model folder" in text, text
    assert "SGLang" in text, "it says why it is accepted"
