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


@pytest.fixture(scope="session")
def qwen3_path(tmp_path_factory, smollm2_tokenizer) -> str:
    """A tiny random Qwen3 checkpoint (seed 5) for PD tests."""
    from e2e.e2e_helpers import tiny_checkpoint

    folder = tmp_path_factory.mktemp("qwen3")
    tiny_checkpoint(folder, "qwen3", smollm2_tokenizer, seed=5)
    return str(folder)


@pytest.fixture(scope="session")
def prompts(smollm2_tokenizer) -> list[list[int]]:
    """16 prompts: long ones (over the chunked-prefill size), shared prefixes, short ones."""
    from e2e.test_greedy_vs_hf import make_prompts

    encode = lambda text: smollm2_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    base = make_prompts(smollm2_tokenizer)
    again = [p + encode(" again") for p in base[2:6]]
    more = [
        base[0] + encode(" Answer briefly."),
        base[1] + encode(" Rhyme."),
        base[6] + encode(" Third."),
        base[7] + encode(" 5, 6,"),
    ]
    return base + again + more
