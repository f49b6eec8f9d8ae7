"""End-to-end fixtures: tiny HF checkpoints with SmolLM2's tokenizer, HF references."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Two cores are shared with the server process under test."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from pdcore.model.embedded import embedded_model_path

    return str(embedded_model_path())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from pdcore.model.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(smollm2_path)
