"""The decode HBM floor of ``bench/gpu/run_all.py`` counts the bytes a step reads,
checked against numbers worked out by hand for the shipped Llama-3.1-8B config."""

from __future__ import annotations

import json

import pytest
from benchscripts.bench_modules import ROOT, load_script

floor = load_script("bench/gpu/decode_floor.py")
CONFIG = json.loads((ROOT / "bench/gpu/llama-3.1-8b-instruct.config.json").read_text())
LLAMA = floor.Dims.from_config(CONFIG)
BF16 = 2

# By hand, Llama-3.1-8B (hidden 4096, MLP 14336, 32 layers, 32 q / 8 kv heads of 128):
#   attention per layer  q 4096*4096 + k,v 2*4096*1024 + o 4096*4096 = 41,943,040
#   MLP per layer        3*4096*14336                               = 176,160,768
#   norms per layer      2*4096                                     = 8,192
#   32 layers + final norm 4096                                     = 6,979,588,096
#   lm_head (untied)     128256*4096                                = 525,336,576
LAYERS_BYTES = 6_979_588_096 * BF16
LM_HEAD_BYTES = 525_336_576 * BF16
KV_PER_TOKEN = 32 * 2 * 8 * 128 * BF16  # 131,072 bytes
ALL_PARAMETERS = 8_030_261_248  # the model's parameter count, embedding table included


def test_the_shipped_config_is_read_as_llama_3_1_8b():
    assert LLAMA == floor.Dims(4096, 14336, 32, 32, 8, 128, 128256, False), (
        "the floor must be computed for the config the GPU bench runs"
    )


def test_batch_1_reads_the_weights_one_embedding_row_and_1k_tokens_of_kv():
    got = floor.decode_step_bytes(LLAMA, BF16, batch=1, context=1024)
    want = {
        "layers": LAYERS_BYTES,
        "lm_head": LM_HEAD_BYTES,
        "embedding_rows": 4096 * BF16,
        "kv_cache": 1024 * KV_PER_TOKEN,
    }
    want["total"] = sum(want.values())
    assert got == want, "the bytes one batch-1 step at 1k context reads, part by part"
    assert got["total"] == 15_144_075_264, "hand total: 15.01 GB weights + 8 KiB + 134 MB KV"


def test_batch_64_reads_the_weights_once_and_64_times_the_kv():
    got = floor.decode_step_bytes(LLAMA, BF16, batch=64, context=1024)
    assert got["layers"] + got["lm_head"] == LAYERS_BYTES + LM_HEAD_BYTES, (
        "weights are read once per step whatever the batch"
    )
    assert got["embedding_rows"] == 64 * 4096 * BF16, "one embedding row per token"
    assert got["kv_cache"] == 64 * 1024 * KV_PER_TOKEN == 8_589_934_592
    assert got["total"] == 23_600_308_224


def test_the_floor_leaves_out_the_embedding_table_a_step_does_not_read():
    every_byte = floor.parameter_bytes(LLAMA, BF16)
    assert every_byte == ALL_PARAMETERS * BF16, "parameter_bytes is the model's size"
    step = floor.decode_step_bytes(LLAMA, BF16, batch=1, context=0)
    table = 128256 * 4096 * BF16
    assert every_byte - (step["total"] - step["embedding_rows"]) == table, (
        "the only difference from counting every parameter is the 1.05 GB embedding table"
    )


def test_a_tied_head_is_counted_once():
    tied = floor.Dims.from_config({**CONFIG, "tie_word_embeddings": True})
    step = floor.decode_step_bytes(tied, BF16, batch=1, context=0)
    assert step["lm_head"] == LM_HEAD_BYTES, "the tied table is read once, as the LM head"
    assert floor.parameter_bytes(tied, BF16) == (ALL_PARAMETERS - 525_336_576) * BF16


def test_floor_seconds_at_3010_gb_per_s_is_5_03_ms_where_the_old_count_gave_5_38():
    new = floor.decode_step_bytes(LLAMA, BF16, batch=1, context=1024)["total"]
    old = floor.parameter_bytes(LLAMA, BF16) + 1024 * KV_PER_TOKEN
    assert floor.floor_seconds(new, 3010e9) == pytest.approx(5.031e-3, abs=1e-6)
    assert floor.floor_seconds(old, 3010e9) == pytest.approx(5.380e-3, abs=1e-6), (
        "the old count reproduces the 5.38 ms floor BENCHMARKS.md reported on H100s"
    )


def test_bad_batch_is_refused():
    with pytest.raises(ValueError, match="batch >= 1"):
        floor.decode_step_bytes(LLAMA, BF16, batch=0, context=1024)


@pytest.mark.parametrize("tied", [False, True])
def test_floor_weights_are_the_weights_pdcore_multiplies(tied, tmp_path):
    """On a tiny Llama built by pdcore on CPU: the floor's weight bytes equal the linear
    weights the cuBLAS reference multiplies plus the norms, and ``parameter_bytes`` is
    the model's size, tied head or not."""
    torch = pytest.importorskip("torch")
    from pdcore.model.loader import _build, load_model_config
    from pdcore.model.registry import get_model_class

    refs = load_script("bench/gpu/gpu_references.py")
    tiny = {**CONFIG, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2}
    tiny.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300)
    tiny["tie_word_embeddings"] = tied
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    config = load_model_config(str(tmp_path))
    model = _build(get_model_class(config.architecture), config, torch.float32, "cpu")
    dims, f32 = floor.Dims.from_config(tiny), 4
    step = floor.decode_step_bytes(dims, f32, batch=1, context=0)
    multiplied = sum(w.numel() * f32 for _, w in refs.linear_weights(model))
    norms = sum(p.numel() * f32 for p in model.parameters() if p.dim() == 1)
    assert multiplied + norms == step["layers"] + step["lm_head"], (
        "the floor must count exactly the weights a step multiplies and the norms"
    )
    every = sum(p.numel() * f32 for p in model.parameters())
    assert every == floor.parameter_bytes(dims, f32), "parameter_bytes is the model's size"
