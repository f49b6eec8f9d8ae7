"""Reuse the end-to-end fixtures (tiny Qwen3 checkpoint, SmolLM2 tokenizer)."""

from e2e.conftest import _one_torch_thread, qwen3_path, smollm2_path, smollm2_tokenizer

__all__ = ["_one_torch_thread", "qwen3_path", "smollm2_path", "smollm2_tokenizer"]
