"""Every kind of bad input is a 400 JSON error, and the server keeps serving."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]

CASES = {
    # /generate
    "generate-malformed-json": ("/generate", b'{"text": "Hi", '),
    "generate-body-not-object": ("/generate", [1, 2]),
    "generate-no-prompt": ("/generate", {"sampling_params": {}}),
    "generate-text-and-ids": ("/generate", {"text": "Hi", "input_ids": [1]}),
    "generate-empty-text": ("/generate", {"text": ""}),
    "generate-empty-batch": ("/generate", {"text": []}),
    "generate-empty-ids": ("/generate", {"input_ids": []}),
    "generate-id-over-vocab": ("/generate", {"input_ids": [1, 260]}),
    "generate-negative-id": ("/generate", {"input_ids": [-1]}),
    "generate-id-wrong-type": ("/generate", {"input_ids": ["a"]}),
    "generate-text-wrong-type": ("/generate", {"text": 5}),
    "generate-negative-temperature": (
        "/generate",
        {"text": "Hi", "sampling_params": {"temperature": -1}},
    ),
    "generate-negative-max": (
        "/generate",
        {"text": "Hi", "sampling_params": {"max_new_tokens": -5}},
    ),
    "generate-max-not-int": (
        "/generate",
        {"text": "Hi", "sampling_params": {"max_new_tokens": "abc"}},
    ),
    "generate-absurd-max": (
        "/generate",
        {"text": "Hi", "sampling_params": {"max_new_tokens": 10**30}},
    ),
    "generate-top-p-zero": ("/generate", {"text": "Hi", "sampling_params": {"top_p": 0}}),
    "generate-huge-top-k": ("/generate", {"text": "Hi", "sampling_params": {"top_k": 10**30}}),
    "generate-stop-not-str": ("/generate", {"text": "Hi", "sampling_params": {"stop": [1]}}),
    "generate-stop-token-over-vocab": (
        "/generate",
        {"text": "Hi", "sampling_params": {"stop_token_ids": [999]}},
    ),
    "generate-n-zero": ("/generate", {"text": "Hi", "sampling_params": {"n": 0}}),
    "generate-negative-seed": ("/generate", {"text": "Hi", "sampling_params": {"seed": -1}}),
    "generate-sampling-not-object": ("/generate", {"text": "Hi", "sampling_params": "fast"}),
    "generate-sampling-list-length": ("/generate", {"text": ["a", "b"], "sampling_params": [{}]}),
    "generate-prompt-over-context": ("/generate", {"text": "x" * 300}),
    "generate-prompt-plus-max-over-context": (
        "/generate",
        {"text": "x" * 100, "sampling_params": {"max_new_tokens": 200}},
    ),
    "generate-duplicate-rids": ("/generate", {"text": ["a", "b"], "rid": ["same", "same"]}),
    "generate-top-logprobs-too-many": (
        "/generate",
        {"text": "Hi", "return_logprob": True, "top_logprobs_num": 50},
    ),
    "generate-stream-bad": ("/generate", {"text": "", "stream": True}),
    "generate-logprob-start-beyond-prompt": (
        "/generate",
        {"text": "Hi", "return_logprob": True, "logprob_start_len": 50},
    ),
    "generate-logprob-start-negative": (
        "/generate",
        {"text": "Hi", "return_logprob": True, "logprob_start_len": -2},
    ),
    "generate-logprob-start-list-length": (
        "/generate",
        {"text": ["a", "b"], "return_logprob": True, "logprob_start_len": [0]},
    ),
    "generate-top-logprobs-negative": (
        "/generate",
        {"text": "Hi", "return_logprob": True, "top_logprobs_num": -1},
    ),
    # /v1/completions
    "completions-no-prompt": (COMPLETIONS, {"model": "default"}),
    "completions-empty-prompt": (COMPLETIONS, {"prompt": ""}),
    "completions-empty-list": (COMPLETIONS, {"prompt": []}),
    "completions-empty-ids": (COMPLETIONS, {"prompt": [[]]}),
    "completions-id-over-vocab": (COMPLETIONS, {"prompt": [999]}),
    "completions-prompt-wrong-type": (COMPLETIONS, {"prompt": 5}),
    "completions-negative-max": (COMPLETIONS, {"prompt": "Hi", "max_tokens": -1}),
    "completions-max-not-int": (COMPLETIONS, {"prompt": "Hi", "max_tokens": "lots"}),
    "completions-max-bool": (COMPLETIONS, {"prompt": "Hi", "max_tokens": True}),
    "completions-absurd-max": (COMPLETIONS, {"prompt": "Hi", "max_tokens": 10**9}),
    "completions-temperature-str": (COMPLETIONS, {"prompt": "Hi", "temperature": "hot"}),
    "completions-temperature-high": (COMPLETIONS, {"prompt": "Hi", "temperature": 500}),
    "completions-n-zero": (COMPLETIONS, {"prompt": "Hi", "n": 0}),
    "completions-n-huge": (COMPLETIONS, {"prompt": "Hi", "n": 100}),
    "completions-logprobs-too-many": (COMPLETIONS, {"prompt": "Hi", "logprobs": 50}),
    "completions-logprobs-negative": (COMPLETIONS, {"prompt": "Hi", "echo": True, "logprobs": -1}),
    "completions-prompt-logprobs-too-many": (COMPLETIONS, {"prompt": "Hi", "prompt_logprobs": 21}),
    "completions-prompt-logprobs-negative": (COMPLETIONS, {"prompt": "Hi", "prompt_logprobs": -1}),
    "completions-empty-stop": (COMPLETIONS, {"prompt": "Hi", "stop": [""]}),
    "completions-stop-wrong-type": (COMPLETIONS, {"prompt": "Hi", "stop": 5}),
    "completions-prompt-over-context": (COMPLETIONS, {"prompt": "x" * 300}),
    # /v1/chat/completions
    "chat-no-messages": (CHAT, {"model": "default"}),
    "chat-empty-messages": (CHAT, {"messages": []}),
    "chat-messages-wrong-type": (CHAT, {"messages": "Hi"}),
    "chat-unknown-role": (CHAT, {"messages": [{"role": "wizard", "content": "Hi"}]}),
    "chat-image-part": (
        CHAT,
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
    ),
    "chat-text-part-without-text": (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    ),
    "generate-lone-surrogate": ("/generate", b'{"text": "\\ud800"}'),
    "chat-content-wrong-type": (CHAT, {"messages": [{"role": "user", "content": 5}]}),
    "chat-template-rejects": (CHAT, {"messages": [{"role": "assistant", "content": "Hi"}]}),
    "chat-top-logprobs-without-logprobs": (CHAT, {"messages": USER, "top_logprobs": 2}),
    "chat-top-logprobs-too-many": (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 30}),
    "chat-negative-max-completion": (CHAT, {"messages": USER, "max_completion_tokens": -3}),
    "chat-presence-penalty-range": (CHAT, {"messages": USER, "presence_penalty": 5}),
    "chat-frequency-penalty-type": (CHAT, {"messages": USER, "frequency_penalty": "x"}),
    "chat-negative-seed": (CHAT, {"messages": USER, "seed": -1}),
    "chat-over-context": (CHAT, {"messages": [{"role": "user", "content": "x" * 300}]}),
    "chat-stream-bad": (CHAT, {"messages": [], "stream": True}),
    # others
    "abort-wrong-type": ("/abort_request", {"rid": 5}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_is_a_400_json_error_and_server_survives(stack, case):
    path, body = CASES[case]
    if isinstance(body, bytes):
        r = await stack.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
    else:
        r = await stack.client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert stack.engine.generate_reqs() == []  # nothing reached the engine
    assert (await stack.client.get("/health")).status_code == 200
    ok = await stack.client.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "He"


MESSAGES = {
    "generate-prompt-plus-max-over-context": ["301", "101", "200", "256"],
    "completions-absurd-max": ["1000000000", "256"],
    "generate-prompt-over-context": ["301", "256"],
    "generate-id-over-vocab": ["260", "vocabulary"],
    "chat-negative-max-completion": ["max_tokens"],
    "completions-temperature-high": ["temperature"],
    "generate-malformed-json": ["JSON"],
    "chat-template-rejects": ["chat template"],
    "generate-logprob-start-beyond-prompt": ["logprob_start_len", "50"],
    "generate-logprob-start-negative": ["logprob_start_len", "-2"],
    "completions-prompt-logprobs-too-many": ["prompt_logprobs", "21"],
    "completions-prompt-logprobs-negative": ["prompt_logprobs"],
}


@pytest.mark.parametrize("case", list(MESSAGES))
async def test_error_messages_say_what_is_wrong(stack, case):
    path, body = CASES[case]
    if isinstance(body, bytes):
        r = await stack.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
    else:
        r = await stack.client.post(path, json=body)
    message = r.json()["error"]["message"]
    for part in MESSAGES[case]:
        assert part in message, message


async def test_unknown_route_is_a_json_404(stack):
    r = await stack.client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_batch_with_one_bad_prompt_sends_nothing(stack):
    r = await stack.client.post("/generate", json={"input_ids": [[1, 2], [1, 999]]})
    assert r.status_code == 400
    assert stack.engine.generate_reqs() == []
