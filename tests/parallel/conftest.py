"""Parallelism tests reuse the end-to-end fixtures (tiny checkpoints, prompts)."""

import httpx
import pytest
from e2e.conftest import _one_torch_thread, prompts, qwen3_path, smollm2_path, smollm2_tokenizer
from e2e.pd_helpers import COMMON, gen_body
from e2e.server_process import ServerProcess

__all__ = ["_one_torch_thread", "prompts", "qwen3_path", "smollm2_path", "smollm2_tokenizer"]

NULL_PROMPTS = 8


@pytest.fixture(scope="session")
def null_outputs(qwen3_path, prompts) -> list[dict]:
    """A null-mode TP=1 server's greedy answers to the first prompts: the reference
    every PD shape is compared with (computed once per session)."""
    server = ServerProcess("--model-path", qwen3_path, *COMMON)
    try:
        with httpx.Client(timeout=120) as client:
            return [
                client.post(f"{server.url}/generate", json=gen_body(p)).json()
                for p in prompts[:NULL_PROMPTS]
            ]
    finally:
        server.stop()
