"""Prompt logprobs through a real null-mode server equal HF transformers' log-softmax.

SGLang's ``/generate`` (``return_logprob`` + ``logprob_start_len``), OpenAI's
``/v1/completions`` ``echo`` + ``logprobs`` (how lm-eval scores log-likelihoods,
``max_tokens`` 0 or 1) and vLLM's ``prompt_logprobs``, on a tiny random float32
llama checkpoint; the server's chunked-prefill size is far below the prompt
length, so every prompt is prefilled in several chunks.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from e2e.e2e_helpers import tiny_checkpoint
from e2e.server_process import ServerProcess

pytestmark = pytest.mark.timeout(240)

CHUNK = 8
TEXT = "The quick brown fox jumps over the lazy dog, then naps under a tree by the river."


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_tokenizer):
    """``(server, prompt ids, HF log-softmax [len(prompt), vocab])``."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf = tiny_checkpoint(folder, "llama", smollm2_tokenizer, seed=6)
    server = ServerProcess(
        "--model-path", str(folder), "--chunked-prefill-size", str(CHUNK), "--page-size", "4",
        wait=False,
    )  # fmt: skip
    try:
        ids = smollm2_tokenizer.encode(TEXT)
        assert len(ids) > 2 * CHUNK, "the prompt must take several prefill chunks"
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
        server.wait_healthy()
        yield server, ids, logp
    finally:
        server.stop()


def hf_prompt_logprobs(ids, logp) -> list[float]:
    """HF's logprob of prompt token ``i`` (i >= 1) after the tokens before it."""
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def assert_close(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst < 1e-4, f"{what}: differs from HF log_softmax by up to {worst:.2e}"


def generate(server, ids, **extra) -> dict:
    body = {
        "input_ids": ids,
        "return_logprob": True,
        "sampling_params": {"max_new_tokens": 2, "temperature": 0},
        **extra,
    }
    r = server.post("/generate", body)
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_input_logprobs_match_hf_in_sglangs_shape(served):
    server, ids, logp = served
    meta = generate(server, ids, logprob_start_len=0, top_logprobs_num=2,
                    return_text_in_logprobs=True)["meta_info"]  # fmt: skip
    entries = meta["input_token_logprobs"]
    assert [e[1] for e in entries] == ids, "one [logprob, token_id, text] per prompt token"
    assert entries[0][0] is None, "the first prompt token has no logprob"
    assert all(isinstance(e[2], str) for e in entries), "return_text_in_logprobs adds the text"
    assert_close([e[0] for e in entries[1:]], hf_prompt_logprobs(ids, logp), "input logprobs")
    tops = meta["input_top_logprobs"]
    assert tops[0] is None and len(tops) == len(ids)
    want = [v for i in range(1, len(ids)) for v in logp[i - 1].topk(2).values.tolist()]
    got = [lp for step in tops[1:] for lp, _, _ in step]
    assert_close(got, want, "input top logprobs")


def test_logprob_start_len_picks_the_first_entry_and_default_gives_one(served):
    server, ids, logp = served
    start = 5
    entries = generate(server, ids, logprob_start_len=start)["meta_info"]["input_token_logprobs"]
    assert [e[1] for e in entries] == ids[start:] and entries[0][0] is None
    assert_close([e[0] for e in entries[1:]], hf_prompt_logprobs(ids, logp)[start:], "from 5")
    default = generate(server, ids)["meta_info"]["input_token_logprobs"]
    assert default == [[None, ids[-1], None]], (
        "SGLang's default (-1): one entry, the last prompt token, logprob None"
    )


def test_a_cached_prompt_still_gets_every_logprob(served):
    server, ids, logp = served
    plain = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1}}
    for _ in range(2):
        assert server.post("/generate", plain).status_code == 200
    assert generate(server, ids)["meta_info"]["cached_tokens"] > CHUNK, "the prompt is cached"
    meta = generate(server, ids, logprob_start_len=0)["meta_info"]
    entries = meta["input_token_logprobs"]
    assert_close([e[0] for e in entries[1:]], hf_prompt_logprobs(ids, logp), "cached prompt")


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_completions_echo_logprobs_score_the_prompt_like_lm_eval(served, max_tokens):
    server, ids, logp = served
    body = {"prompt": ids, "max_tokens": max_tokens, "echo": True, "logprobs": 1,
            "temperature": 0}  # fmt: skip
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    n = len(ids)
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == n + max_tokens
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert_close(lp["token_logprobs"][1:n], hf_prompt_logprobs(ids, logp), "echo logprobs")
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and all(
        b - a == len(t) for a, b, t in zip(offsets, offsets[1:], lp["tokens"], strict=False)
    ), "text_offset runs over the token texts"
    for i in range(1, n):
        assert len(lp["top_logprobs"][i]) == 1, "logprobs: 1 gives one alternative per token"
    assert r.json()["usage"]["completion_tokens"] == max_tokens


def test_vllm_prompt_logprobs(served):
    server, ids, logp = served
    body = {"prompt": ids, "max_tokens": 1, "prompt_logprobs": 2, "temperature": 0}
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    plp = choice["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    want = hf_prompt_logprobs(ids, logp)
    for i in range(1, len(ids)):
        entry = plp[i][str(ids[i])]
        assert abs(entry["logprob"] - want[i - 1]) < 1e-4
        rank = int((logp[i - 1] > logp[i - 1, ids[i]]).sum()) + 1
        assert entry["rank"] == rank, f"position {i}: the prompt token's rank in the distribution"
        ranks = sorted(e["rank"] for t, e in plp[i].items() if t != str(ids[i]) or e["rank"] <= 2)
        assert ranks[:2] == [1, 2], "the top-2 come with ranks 1 and 2"
    assert choice["logprobs"] is None, "prompt_logprobs alone asks for no output logprobs"


def test_streamed_generate_carries_the_input_logprobs_from_the_first_chunk(served):
    server, ids, logp = served
    body = {"input_ids": ids, "return_logprob": True, "logprob_start_len": 0, "stream": True,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0}}  # fmt: skip
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        events = [
            json.loads(line[6:])
            for line in r.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    assert len(events) >= 2
    for event in events:
        entries = event["meta_info"]["input_token_logprobs"]
        assert [e[1] for e in entries] == ids, "every chunk carries the prompt's logprobs"
    assert_close(
        [e[0] for e in events[0]["meta_info"]["input_token_logprobs"][1:]],
        hf_prompt_logprobs(ids, logp),
        "first chunk",
    )
