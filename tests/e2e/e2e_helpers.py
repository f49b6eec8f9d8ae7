"""Helpers for end-to-end tests: tiny checkpoints that share SmolLM2's tokenizer."""

from __future__ import annotations


def tiny_checkpoint(folder, family: str, tokenizer, seed: int, **overrides):
    """A random-weight HF folder of ``family`` that uses SmolLM2's tokenizer
    (``overrides``: more config fields)."""
    from model.model_helpers import make_checkpoint

    hf = make_checkpoint(
        folder,
        family,
        seed=seed,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_ids[0],
        **overrides,
    )
    tokenizer.hf.save_pretrained(folder)
    return hf
