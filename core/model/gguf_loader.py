"""GGUF files (llama.cpp format): config from metadata, dequantized HF-named tensors.

Weights are dequantized to float with ``gguf.quants.dequantize`` (every ggml
type the installed ``gguf`` package knows: F32/F16/BF16, Q4_0..Q8_0, K-quants,
...) and served in HF names so the models' loaders need no GGUF knowledge.
llama.cpp's converter permutes the rows of Llama-architecture Q and K weights
for its interleaved RoPE; that is undone here as transformers' GGUF loader does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from pdcore.model.config import ModelConfig

GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",  # also Mistral and SmolLM2 conversions
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x frequency factors, folded into the config


class PlainArrayReader(GGUFReader):
    """Slices a plain-ndarray view of the memory map instead of the ``np.memmap`` itself,
    whose per-slice Python hook dominates parsing 100k-entry token lists (halves the
    open time). The view keeps the map alive through ``.base``."""

    def _get(self, *args, **kwargs):
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)
        return super()._get(*args, **kwargs)


def open_gguf(path: str) -> GGUFReader:
    """A memory-mapped ``gguf.GGUFReader``; ValueError if the file is not valid GGUF."""
    try:
        return PlainArrayReader(path)
    except Exception as e:
        raise ValueError(f"not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, default=None):
    """A scalar metadata value (int, float, bool or str)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    if field.types[0] == GGUFValueType.ARRAY:
        raise ValueError(f"GGUF metadata {key!r} is an array, expected a scalar")
    return field.parts[field.data[0]][0].item()


def _required(reader, key: str):
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF metadata has no {key!r}")
    return value


def _rope_scaling(reader, arch: str, head_dim: int) -> dict | None:
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            factors = _dequantize(tensor).reshape(-1)
            if factors.shape[0] != head_dim // 2:
                raise ValueError(
                    f"{ROPE_FREQS} has {factors.shape[0]} values, expected {head_dim // 2}"
                )
            return {"rope_type": "freq_factors", "factors": factors.tolist()}
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise ValueError(f"Unsupported GGUF rope scaling type {kind!r}. Supported: linear, yarn")
    scaling = {"rope_type": kind, "factor": float(_required(reader, f"{arch}.rope.scaling.factor"))}
    original = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    for key in ("beta_fast", "beta_slow"):
        value = _field(reader, f"{arch}.rope.scaling.yarn_{key}")
        if value is not None and kind == "yarn":
            scaling[key] = float(value)
    return scaling


def gguf_model_config(reader) -> ModelConfig:
    """``ModelConfig`` from GGUF metadata; ValueError for unsupported or incomplete files."""
    arch = _required(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"Unsupported GGUF architecture {arch!r}. Supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    heads = int(_required(reader, f"{arch}.attention.head_count"))
    hidden = int(_required(reader, f"{arch}.embedding_length"))
    head_dim = int(
        _field(reader, f"{arch}.attention.key_length")
        or _field(reader, f"{arch}.rope.dimension_count")
        or hidden // heads
    )
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError("GGUF metadata has neither a vocab_size nor a token list")
        vocab = len(tokens.data)
    eos = [
        int(v)
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (v := _field(reader, f"tokenizer.ggml.{key}")) is not None
    ]
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_required(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(_required(reader, f"{arch}.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(_required(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(reader, arch, head_dim),
        max_position_embeddings=int(_required(reader, f"{arch}.context_length")),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        attention_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=sorted(set(eos)),
    )


def _dequantize(tensor) -> np.ndarray:
    try:
        # A plain ndarray view: numpy memmap slicing overhead dominates otherwise.
        return dequantize(np.asarray(tensor.data), tensor.tensor_type)
    except NotImplementedError as e:
        raise ValueError(
            f"GGUF tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the "
            f"installed gguf package cannot dequantize"
        ) from e


def hf_tensor_name(gguf_name: str) -> str:
    """The HF checkpoint name of a llama.cpp tensor; ValueError if it has none."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    match = BLOCK_RE.fullmatch(gguf_name)
    if match and match.group(2) in BLOCK_TENSORS:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{BLOCK_TENSORS[part]}.{kind}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r}: no HF equivalent is known")


def unpermute_qk(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (transformers' ``_reverse_permute_weights``)."""
    half = weight.shape[0] // num_heads // 2
    grouped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)


def gguf_weights(reader, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized float32 tensors in HF names, one at a time (bounded memory)."""
    permute = _required(reader, "general.architecture") == "llama"
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue
        name = hf_tensor_name(tensor.name)
        weight = torch.from_numpy(np.array(_dequantize(tensor), dtype=np.float32))
        if permute and name.endswith("q_proj.weight"):
            weight = unpermute_qk(weight, config.num_attention_heads)
        elif permute and name.endswith("k_proj.weight"):
            weight = unpermute_qk(weight, config.num_key_value_heads)
        yield name, weight
