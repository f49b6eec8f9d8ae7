"""Chaos tests reuse the end-to-end fixtures (tiny Qwen3 checkpoint, prompts).

The tests put their figures in ``profile.FIGURES``; ``run_figures.py`` prints them at
the end of pytest's summary and, with ``PDCORE_CHAOS_REPORT=path``, writes them there
as JSON.
"""

from e2e.conftest import _one_torch_thread, prompts, qwen3_path, smollm2_path, smollm2_tokenizer

__all__ = ["_one_torch_thread", "prompts", "qwen3_path", "smollm2_path", "smollm2_tokenizer"]
