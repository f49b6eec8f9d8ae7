"""Tiny random HF checkpoints and transformers reference runs for model tests."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    # Wider than HF's 0.02 default so logits are spread out and greedy picks are not
    # decided by float noise.
    initializer_range=0.2,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


# DeepSeek MLA + MoE on top of TINY: layer 0 dense, the rest 8 experts top-2 + 1 shared.
# MLA has no GQA: transformers expands K/V to every head itself.
DEEPSEEK = dict(
    num_hidden_layers=3,
    num_key_value_heads=4,
    kv_lora_rank=32,
    q_lora_rank=None,
    qk_nope_head_dim=16,
    qk_rope_head_dim=16,
    v_head_dim=24,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    first_k_dense_replace=1,
)
DEEPSEEK_V3 = dict(n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)


def hf_config(family: str, **overrides):
    """A transformers config of ``family`` ("llama", "mistral", "qwen2", "qwen3",
    "deepseek_v2", "deepseek_v3")."""
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "deepseek_v2": transformers.DeepseekV2Config,
        "deepseek_v3": transformers.DeepseekV3Config,
    }[family]
    extra = {"deepseek_v2": DEEPSEEK, "deepseek_v3": {**DEEPSEEK, **DEEPSEEK_V3}}.get(family, {})
    kwargs = {**TINY, **extra, **overrides}
    if family == "qwen3":
        kwargs.setdefault("head_dim", 16)
    return cls(**kwargs)


def make_checkpoint(folder: Path, family: str, seed: int = 0, max_shard_size=None, **overrides):
    """Write a random-weight float32 safetensors checkpoint; returns the HF model (eval)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at 1.0; perturb them so their loading is checked
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
        for name, buf in model.named_buffers():  # DeepSeek-V3's router bias starts at 0
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return load_hf(folder)


def load_hf(folder: Path, **kwargs):
    """The transformers reference: float32, eager attention, local files only."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch.float32,
        attn_implementation="eager",
        local_files_only=True,
        **kwargs,
    )
    return model.eval()


@torch.no_grad()
def hf_logits(model, input_ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([input_ids])).logits[0].float()


@torch.no_grad()
def hf_greedy(model, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with transformers' KV cache, one token per step (no
    generation_config involved, so no eos or length rules interfere)."""
    out = model(torch.tensor([input_ids]), use_cache=True)
    key = "cache" if hasattr(out, "cache") else "past_key_values"  # renamed in transformers 5
    tokens: list[int] = []
    while True:
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            return tokens
        out = model(torch.tensor([[token]]), use_cache=True, **{key: getattr(out, key)})


GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_GLOBAL:
        return GGUF_GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_BLOCK[module]}.{kind}"


def llama_cpp_permute(weight, num_heads: int):
    """llama.cpp's ``LlamaModel.permute`` of Q/K rows (what pdcore must undo)."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


@torch.no_grad()
def write_gguf(path: Path, hf_model, arch: str, matrix_type, rope_freqs=None) -> None:
    """Write ``hf_model`` as llama.cpp's converter would (Llama Q/K rows permuted).

    2-D weights are stored as ``matrix_type``; their quantization round trip is
    written back into ``hf_model`` so it stays the exact reference.
    ``rope_freqs``: Llama 3 frequency factors to store as ``rope_freqs.weight``.
    """
    import gguf
    import numpy as np
    from gguf.quants import dequantize, quantize

    cfg = hf_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_eos_token_id(cfg.vocab_size - 1)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    tied = cfg.tie_word_embeddings
    for name, param in hf_model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        data = param.numpy()
        if data.ndim == 2 and matrix_type != gguf.GGMLQuantizationType.F32:
            param.copy_(torch.from_numpy(dequantize(quantize(data, matrix_type), matrix_type)))
        if arch == "llama" and ".q_proj.weight" in name:
            data = llama_cpp_permute(data, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj.weight" in name:
            data = llama_cpp_permute(data, cfg.num_key_value_heads)
        if data.ndim == 2 and matrix_type != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), quantize(data, matrix_type), raw_dtype=matrix_type)
        else:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
