"""``/tokenize`` and ``/detokenize`` in SGLang's shapes (and under ``/v1``), over the
byte tokenizer: ids are UTF-8 bytes, BOS 256, EOS 257, vocabulary 260."""

from __future__ import annotations

import pytest
from server.fake_backend import BOS, EOS
from server.harness import CONTEXT

pytestmark = pytest.mark.anyio

HI = [72, 105]


async def post(stack, path: str, body: dict) -> dict:
    r = await stack.client.post(path, json=body)
    assert r.status_code == 200, f"{path} {body}: {r.text}"
    return r.json()


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_tokenize_one_prompt(stack, prefix):
    out = await post(stack, f"{prefix}/tokenize", {"prompt": "Hi"})
    assert out == {"tokens": [BOS, *HI], "count": 3, "max_model_len": CONTEXT}, out


async def test_tokenize_without_special_tokens(stack):
    out = await post(stack, "/tokenize", {"prompt": "Hi", "add_special_tokens": False})
    assert out["tokens"] == HI and out["count"] == 2, out


async def test_tokenize_a_batch_gives_lists(stack):
    out = await post(stack, "/tokenize", {"prompt": ["Hi", ""], "add_special_tokens": False})
    assert (out["tokens"], out["count"]) == ([HI, []], [2, 0]), out


async def test_tokenize_messages_renders_the_chat_template(stack):
    """vLLM's ``messages`` form: the ids a chat request with them would prefill."""
    messages = [{"role": "user", "content": "Hi"}]
    out = await post(stack, "/tokenize", {"messages": messages})
    expected = list(b"<|user|>Hi\n<|assistant|>")
    assert out["tokens"] == expected and out["count"] == len(expected), out


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_detokenize_one_list(stack, prefix):
    out = await post(stack, f"{prefix}/detokenize", {"tokens": [BOS, *HI, EOS]})
    assert out == {"text": "Hi"}, f"special tokens are skipped by default: {out}"


async def test_detokenize_keeps_special_tokens_when_asked(stack):
    body = {"tokens": [BOS, *HI], "skip_special_tokens": False}
    assert (await post(stack, "/detokenize", body)) == {"text": "<s>Hi"}


async def test_detokenize_a_batch_gives_a_list(stack):
    out = await post(stack, "/detokenize", {"tokens": [HI, [], list(b"!")]})
    assert out == {"text": ["Hi", "", "!"]}, out


async def test_tokenize_then_detokenize_round_trips(stack):
    text = "Ünïcødé 你好"
    ids = (await post(stack, "/tokenize", {"prompt": text}))["tokens"]
    assert (await post(stack, "/detokenize", {"tokens": ids}))["text"] == text


BAD = {
    "tokenize-no-prompt": ("/tokenize", {}, "exactly one of 'prompt' or 'messages'"),
    "tokenize-prompt-and-messages": (
        "/tokenize",
        {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]},
        "exactly one",
    ),
    "tokenize-prompt-number": ("/tokenize", {"prompt": 5}, "prompt"),
    "tokenize-bad-role": ("/tokenize", {"messages": [{"role": "x", "content": "Hi"}]}, "role"),
    "detokenize-no-tokens": ("/detokenize", {}, "tokens"),
    "detokenize-over-vocab": ("/detokenize", {"tokens": [72, 260]}, "260"),
    "detokenize-negative": ("/detokenize", {"tokens": [-1]}, "-1"),
    "detokenize-batch-over-vocab": ("/detokenize", {"tokens": [[72], [10**12]]}, "tokens[1]"),
    "detokenize-strings": ("/detokenize", {"tokens": ["Hi"]}, "tokens"),
    "detokenize-booleans": ("/detokenize", {"tokens": [True]}, "tokens"),
    "detokenize-too-deep": ("/detokenize", {"tokens": [[[1]]]}, "tokens"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_a_400_naming_the_problem(stack, case):
    path, body, needle = BAD[case]
    r = await stack.client.post(path, json=body)
    assert r.status_code == 400, f"{case}: {r.status_code} {r.text}"
    message = r.json()["error"]["message"]
    assert needle in message, f"{case}: the message must say {needle!r}: {message}"
