"""``--skip-tokenizer-init``: token ids in, token ids out; text is a 400 naming the flag.

The front end runs with ``NoTokenizer`` (what ``launch`` loads under the flag)
over the fake engine, whose script is the UTF-8 bytes of ``DEFAULT_SCRIPT``.
"""

from __future__ import annotations

import pytest
from server.fake_backend import DEFAULT_SCRIPT, EOS, VOCAB
from server.harness import asgi_stack, sse_events

from pdcore.server.no_tokenizer import NoTokenizer

pytestmark = pytest.mark.anyio

IDS = [72, 105]
SCRIPT = list(DEFAULT_SCRIPT.encode("utf-8"))
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def stack():
    tokenizer = NoTokenizer(VOCAB, [EOS])
    async with asgi_stack(tokenizer=tokenizer, skip_tokenizer_init=True) as s:
        yield s


def gen(max_new: int = 5, **sampling) -> dict:
    return {"input_ids": IDS, "sampling_params": {"max_new_tokens": max_new, **sampling}}


async def test_generate_returns_ids_and_no_text(stack):
    r = await stack.client.post("/generate", json=gen(5))
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"output_ids", "meta_info"}, f"SGLang sends no 'text' here: {out}"
    assert out["output_ids"] == SCRIPT[:5]
    meta = out["meta_info"]
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (2, 5), meta
    assert meta["finish_reason"] == {"type": "length", "length": 5}, meta


async def test_streamed_and_batched_outputs_carry_ids_only(stack):
    r = await stack.client.post("/generate", json={**gen(4), "stream": True})
    chunks = [e for e in sse_events(r.text) if e != "[DONE]"]
    assert chunks and all("text" not in c for c in chunks), chunks
    assert chunks[-1]["output_ids"] == SCRIPT[:4], "the last chunk holds every id so far"
    batch = await stack.client.post("/generate", json={**gen(3), "input_ids": [IDS, [1, 2, 3]]})
    assert [o["output_ids"] for o in batch.json()] == [SCRIPT[:3]] * 2, batch.text


async def test_stop_token_ids_still_stop(stack):
    stop = SCRIPT[4]  # "o" of "Hello"
    r = await stack.client.post("/generate", json=gen(20, stop_token_ids=[stop]))
    out = r.json()
    assert out["output_ids"] == SCRIPT[:5], f"generation ends at the stop id: {out}"
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}


async def test_health_generate_needs_no_tokenizer(stack):
    r = await stack.client.get("/health_generate")
    assert r.status_code == 200, f"the probe must use ids without a tokenizer: {r.text}"


async def test_model_info_reports_no_tokenizer(stack):
    info = (await stack.client.get("/model_info")).json()
    assert info["tokenizer_path"] is None, info


NEEDS_TEXT = {
    "generate-text": ("/generate", {"text": "Hi"}, "a text prompt"),
    "generate-stop-string": ("/generate", gen(5, stop=["o"]), "'stop'"),
    "generate-logprob-text": (
        "/generate",
        {**gen(2), "return_logprob": True, "return_text_in_logprobs": True},
        "return_text_in_logprobs",
    ),
    "chat": ("/v1/chat/completions", {"messages": USER}, "/v1/chat/completions"),
    "completions-ids": ("/v1/completions", {"prompt": IDS}, "/v1/completions"),
    "completions-text": ("/v1/completions", {"prompt": "Hi"}, "/v1/completions"),
    "tokenize": ("/tokenize", {"prompt": "Hi"}, "/tokenize"),
    "detokenize": ("/detokenize", {"tokens": IDS}, "/detokenize"),
}


@pytest.mark.parametrize("case", list(NEEDS_TEXT))
async def test_what_needs_text_is_a_400_naming_the_flag(stack, case):
    path, body, what = NEEDS_TEXT[case]
    r = await stack.client.post(path, json=body)
    assert r.status_code == 400, f"{case}: {r.status_code} {r.text}"
    message = r.json()["error"]["message"]
    assert "--skip-tokenizer-init" in message and what in message, message
    assert stack.engine.generate_reqs() == [], "nothing reaches the engine"
