"""The bytes one decode step must read from device memory, and the floor they set.

A decode step at batch B and context C reads each weight it multiplies once (whatever
B is), gathers B rows of the input embedding (not the whole table), and reads the KV
of B x C cached tokens. Dividing by the measured copy bandwidth gives the "HBM floor":
no kernel can finish the step faster. Counting the whole parameter set instead (as
this bench once did) adds the embedding table, 1.05 GB for Llama-3.1-8B, that a step
never reads, and makes every ratio to the floor look better than it is.

Pure arithmetic (no torch), so it is unit-tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    """The model dimensions the floor depends on (a dense Llama-style decoder)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config) -> Dims:
        """From an HF config dict or any object with HF's attribute names."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(
            hidden=hidden,
            intermediate=get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            vocab=get("vocab_size"),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
        )


def layer_weight_elements(d: Dims) -> dict[str, int]:
    """Elements of one decoder layer's weights, by kind."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return {
        "attention": d.hidden * q + 2 * d.hidden * kv + q * d.hidden,  # q, k, v, o
        "mlp": 3 * d.hidden * d.intermediate,  # gate, up, down
        "norms": 2 * d.hidden,  # input and post-attention RMS norms
    }


def kv_bytes_per_token(d: Dims, dtype_bytes: int) -> int:
    """K and V of one token over all layers."""
    return d.layers * 2 * d.kv_heads * d.head_dim * dtype_bytes


def decode_step_bytes(d: Dims, dtype_bytes: int, batch: int, context: int) -> dict[str, int]:
    """Bytes a decode step reads, by part, and their ``total``.

    ``layers``: every decoder layer's attention and MLP projections and norms, plus
    the final norm; ``lm_head``: the output projection (the embedding table itself
    when tied, then counted here only); ``embedding_rows``: the ``batch`` rows
    gathered for the step's input tokens; ``kv_cache``: ``batch`` x ``context``
    tokens of K and V. Writes (the new tokens' KV, logits) and activations are left
    out: they are small against these at decode batch sizes.
    """
    if batch < 1 or context < 0 or dtype_bytes < 1:
        raise ValueError(f"batch >= 1, context >= 0, dtype_bytes >= 1; got {batch}, {context}")
    per_layer = sum(layer_weight_elements(d).values())
    parts = {
        "layers": (d.layers * per_layer + d.hidden) * dtype_bytes,
        "lm_head": d.vocab * d.hidden * dtype_bytes,
        "embedding_rows": batch * d.hidden * dtype_bytes,
        "kv_cache": batch * context * kv_bytes_per_token(d, dtype_bytes),
    }
    parts["total"] = sum(parts.values())
    return parts


def parameter_bytes(d: Dims, dtype_bytes: int) -> int:
    """Every parameter once (what the old floor counted): the layers, the final norm,
    the embedding table and, when untied, the LM head."""
    per_layer = sum(layer_weight_elements(d).values())
    table = d.vocab * d.hidden
    heads = table if d.tied_embeddings else 2 * table
    return (d.layers * per_layer + d.hidden + heads) * dtype_bytes


def floor_seconds(step_bytes: int, bandwidth_bytes_per_s: float) -> float:
    """The time to stream ``step_bytes`` once at the measured copy bandwidth."""
    return step_bytes / bandwidth_bytes_per_s
