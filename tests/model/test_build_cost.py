"""Building a model costs no more than its weights: every engine process (each server,
each TP rank) pays for what the loader imports, so the loader must not drag in
torch's compiler stack for random init that the checkpoint overwrites anyway."""

from __future__ import annotations

import subprocess
import sys

from model.model_helpers import hf_config

FAMILIES = {
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

BUILD = """
import sys, torch
from pdcore.model.loader import load_model
for folder in sys.argv[1:]:
    load_model(folder, torch.float32, "cpu", load_tokenizer=False, load_format="dummy")
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""


def test_building_a_model_does_not_import_torch_dynamo(tmp_path):
    folders = []
    for family, architecture in FAMILIES.items():
        folder = tmp_path / family
        hf_config(family, architectures=[architecture]).save_pretrained(folder)
        folders.append(str(folder))
    out = subprocess.run(
        [sys.executable, "-c", BUILD, *folders], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "dynamo imported: False", (
        "building a model imported torch._dynamo (about 2.4 s of CPU in every engine "
        f"process): {out.stdout.strip()!r}"
    )
