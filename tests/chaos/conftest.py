"""Chaos tests reuse the end-to-end fixtures (tiny Qwen3 checkpoint, prompts).

The tests put their figures in ``profile.FIGURES``; they are printed at the end of
pytest's summary and, with ``PDCORE_CHAOS_REPORT=path``, written there as JSON.
"""

import json
import os

from chaos import profile
from e2e.conftest import _one_torch_thread, prompts, qwen3_path, smollm2_path, smollm2_tokenizer

__all__ = ["_one_torch_thread", "prompts", "qwen3_path", "smollm2_path", "smollm2_tokenizer"]


def pytest_sessionfinish(session):
    path = os.environ.get("PDCORE_CHAOS_REPORT")
    if path and profile.FIGURES:
        with open(path, "w") as f:
            json.dump({"profile": profile.NAME, **profile.FIGURES}, f, indent=1)


def pytest_terminal_summary(terminalreporter):
    if profile.FIGURES:
        terminalreporter.write_sep("-", f"chaos figures ({profile.NAME} profile)")
        terminalreporter.write_line(json.dumps(profile.FIGURES, indent=1))
