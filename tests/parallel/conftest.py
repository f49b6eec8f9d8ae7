"""Parallelism tests reuse the end-to-end fixtures (tiny checkpoints, prompts)."""

from e2e.conftest import _one_torch_thread, prompts, qwen3_path, smollm2_path, smollm2_tokenizer

__all__ = ["_one_torch_thread", "prompts", "qwen3_path", "smollm2_path", "smollm2_tokenizer"]
