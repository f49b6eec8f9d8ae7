"""Greedy output equals HF transformers token for token, with requests in flight together.

Eight prompts go to a real server at once: two longer than the chunked-prefill
size, three sharing a long prefix (prefix cache), the rest short. A divergence
is tolerated only at a step where HF's top-2 logits differ by < 1e-4; any such
step is reported in the test output.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from e2e.e2e_helpers import tiny_checkpoint
from e2e.server_process import ServerProcess

MAX_NEW = 16
CHUNK = 64


def make_prompts(tokenizer) -> list[list[int]]:
    chat = lambda text: tokenizer.encode(  # noqa: E731
        tokenizer.apply_chat_template([{"role": "user", "content": text}]),
        add_special_tokens=False,
    )
    story = " ".join(f"Item {i} is a {c} box." for i, c in enumerate(["red", "blue"] * 20))
    shared = chat("Here is a list. " + story)
    return [
        chat("What is the capital of France?"),
        chat("Write a haiku about the sea."),
        chat("Explain paged attention in one sentence. " + story),  # > CHUNK tokens
        chat(story + " Which box is item 7?"),  # > CHUNK tokens
        shared[:-5] + tokenizer.encode(" first", add_special_tokens=False),
        shared[:-5] + tokenizer.encode(" second", add_special_tokens=False),
        shared,
        tokenizer.encode("1, 2, 3, 4,", add_special_tokens=False),
    ]


@torch.no_grad()
def hf_greedy_with_logits(model, ids: list[int], n: int):
    out = model(torch.tensor([ids]), use_cache=True)
    key = "cache" if hasattr(out, "cache") else "past_key_values"
    tokens, logits = [], []
    for _ in range(n):
        step = out.logits[0, -1].double()
        logits.append(step)
        tokens.append(int(step.argmax()))
        out = model(torch.tensor([[tokens[-1]]]), use_cache=True, **{key: getattr(out, key)})
    return tokens, logits


async def generate_all(url: str, prompts, **extra):
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(ids):
            body = {
                "input_ids": ids,
                "return_logprob": True,
                "sampling_params": {
                    "max_new_tokens": MAX_NEW,
                    "temperature": 0,
                    "ignore_eos": True,
                },
                **extra,
            }
            r = await client.post(f"{url}/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        return await asyncio.gather(*(one(p) for p in prompts))


def compare(results, references, prompts, report):
    for i, (res, (ref_tokens, ref_logits)) in enumerate(zip(results, references, strict=True)):
        got = res["output_ids"]
        assert len(got) == MAX_NEW, f"prompt {i}: {len(got)} tokens"
        for step, (a, b) in enumerate(zip(got, ref_tokens, strict=True)):
            if a != b:
                top2 = torch.topk(ref_logits[step], 2).values
                margin = float(top2[0] - top2[1])
                assert margin < 1e-4, (
                    f"prompt {i} (len {len(prompts[i])}) diverges at step {step}: "
                    f"pdcore {a} vs HF {b}, HF top-2 margin {margin:.2e}"
                )
                report.append(f"prompt {i} step {step}: near-tie (margin {margin:.1e})")
                break
        logprobs = [t[0] for t in res["meta_info"]["output_token_logprobs"]]
        for step, (lp, tid) in enumerate(zip(logprobs, got, strict=True)):
            if tid != ref_tokens[step]:
                break
            want = float(torch.log_softmax(ref_logits[step], -1)[tid])
            assert abs(lp - want) < 1e-4, f"prompt {i} step {step}: logprob {lp} vs HF {want}"


@pytest.fixture(scope="module")
def divergences():
    found: list[str] = []
    yield found
    if found:
        print("\nnear-tie divergences:", *found, sep="\n  ")


def run_case(model_path, hf_model, tokenizer, divergences, *server_args):
    prompts = make_prompts(tokenizer)
    assert sum(len(p) > CHUNK for p in prompts) >= 2, "need prompts longer than the chunk"
    server = ServerProcess(  # loads on the other core while HF computes the references
        "--model-path",
        model_path,
        "--chunked-prefill-size",
        str(CHUNK),
        "--page-size",
        "16",
        *server_args,
        wait=False,
    )
    try:
        references = [hf_greedy_with_logits(hf_model, p, MAX_NEW) for p in prompts]
        server.wait_healthy()
        results = asyncio.run(generate_all(server.url, prompts))
        compare(results, references, prompts, divergences)
        pages = server.kv_pages()
        assert pages["used_pages"] == 0, f"pages still used after all requests: {pages}"
    finally:
        server.stop()


@pytest.mark.slow
def test_smollm2_gguf_matches_hf(smollm2_path, smollm2_tokenizer, divergences):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    path = Path(smollm2_path)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
    ).eval()
    run_case(smollm2_path, hf, smollm2_tokenizer, divergences)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_tiny_random_checkpoint_matches_hf(tmp_path, family, smollm2_tokenizer, divergences):
    hf = tiny_checkpoint(tmp_path, family, smollm2_tokenizer, seed=3)
    run_case(str(tmp_path), hf, smollm2_tokenizer, divergences)


def test_retraction_under_tiny_kv_budget_still_matches_hf(tmp_path, smollm2_tokenizer, divergences):
    """A pool far too small for all eight requests: retraction, no change in output."""
    hf = tiny_checkpoint(tmp_path, "llama", smollm2_tokenizer, seed=4)
    run_case(str(tmp_path), hf, smollm2_tokenizer, divergences, "--max-total-tokens", "512")
