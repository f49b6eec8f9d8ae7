"""OpenAI ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``."""

from __future__ import annotations

import pytest
from server.fake_backend import DEFAULT_SCRIPT
from server.harness import MODEL_PATH, sse_events

pytestmark = pytest.mark.anyio


async def post(stack, path, **body):
    r = await stack.client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r


async def test_models_lists_the_served_model(stack):
    """Without --served-model-name the name is the model path, as SGLang serves it."""
    r = await stack.client.get("/v1/models")
    (model,) = r.json()["data"]
    assert model["id"] == MODEL_PATH and model["object"] == "model", model
    assert model["root"] == MODEL_PATH and model["max_model_len"] == 256


@pytest.mark.parametrize("name", ["Fake-Model-1B", MODEL_PATH, "default", None])
async def test_model_names_accepted(stack, name):
    body = {"prompt": "Hi", "max_tokens": 1}
    if name is not None:
        body["model"] = name
    out = (await post(stack, "/v1/completions", **body)).json()
    assert out["model"] == (name or MODEL_PATH)


async def test_completion_shape_and_usage(stack):
    out = (await post(stack, "/v1/completions", model="default", prompt="Hi", max_tokens=5)).json()
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["text"] == DEFAULT_SCRIPT[:5] and choice["index"] == 0
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert out["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_completion_default_max_tokens_is_16(stack):
    out = (await post(stack, "/v1/completions", prompt="Hi")).json()
    assert out["usage"]["completion_tokens"] == 16


async def test_max_completion_tokens_means_max_tokens(stack):
    a = (await post(stack, "/v1/completions", prompt="Hi", max_tokens=4)).json()
    b = (await post(stack, "/v1/completions", prompt="Hi", max_completion_tokens=4)).json()
    c = (
        await post(
            stack,
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "x"}],
            max_completion_tokens=4,
        )
    ).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == DEFAULT_SCRIPT[:4]
    assert c["choices"][0]["message"]["content"] == DEFAULT_SCRIPT[:4]


async def test_prompt_forms_and_n_give_indexed_choices(stack):
    out = (
        await post(stack, "/v1/completions", prompt=["Hi", "EOS now"], n=2, max_tokens=13)
    ).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in out["choices"]]
    assert texts[:2] == [DEFAULT_SCRIPT[:13]] * 2 and texts[2:] == ["short answer"] * 2
    assert [c["finish_reason"] for c in out["choices"]] == ["length", "length", "stop", "stop"]
    assert out["usage"]["prompt_tokens"] == 3 + 8  # counted once per prompt, not per choice
    rids = sorted(r.rid for r in stack.engine.generate_reqs())
    assert rids == sorted(f"{out['id']}-{i}" for i in range(4))
    ids = (await post(stack, "/v1/completions", prompt=[72, 105], max_tokens=2)).json()
    assert ids["usage"]["prompt_tokens"] == 2
    many = (await post(stack, "/v1/completions", prompt=[[72], [73, 74]], max_tokens=1)).json()
    assert len(many["choices"]) == 2


async def test_completion_echo(stack):
    out = (await post(stack, "/v1/completions", prompt="Say: ", max_tokens=5, echo=True)).json()
    assert out["choices"][0]["text"] == "Say: " + DEFAULT_SCRIPT[:5]


async def test_completion_logprobs_shape(stack):
    out = (await post(stack, "/v1/completions", prompt="Hi", max_tokens=3, logprobs=2)).json()
    lp = out["choices"][0]["logprobs"]
    assert lp["tokens"] == ["H", "e", "l"] and lp["token_logprobs"] == [-0.5] * 3
    assert lp["top_logprobs"][0] == {"H": -0.5, "I": -1.5}
    assert lp["text_offset"] == [0, 1, 2]
    zero = (await post(stack, "/v1/completions", prompt="Hi", max_tokens=1, logprobs=0)).json()
    assert zero["choices"][0]["logprobs"]["top_logprobs"] is None


async def test_completion_stream_with_usage(stack):
    r = await post(
        stack,
        "/v1/completions",
        prompt="Hi",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=1,
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == DEFAULT_SCRIPT[:6]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    tokens = [
        t
        for c in chunks
        if c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["tokens"]
    ]
    assert "".join(tokens) == DEFAULT_SCRIPT[:6]


async def test_chat_completion_shape(stack):
    out = (
        await post(
            stack,
            "/v1/chat/completions",
            model="Fake-Model-1B",
            max_tokens=5,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
        )
    ).json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": DEFAULT_SCRIPT[:5]}
    assert choice["finish_reason"] == "length"
    prompt = "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    assert stack.engine.generate_reqs()[0].input_ids == list(prompt.encode())  # no extra BOS
    assert out["usage"]["prompt_tokens"] == len(prompt.encode())


async def test_chat_without_max_tokens_runs_to_eos_or_context(stack):
    out = (
        await post(stack, "/v1/chat/completions", messages=[{"role": "user", "content": "EOS"}])
    ).json()
    assert out["choices"][0]["message"]["content"] == "short answer"
    assert out["choices"][0]["finish_reason"] == "stop"
    sent = stack.engine.generate_reqs()[0]
    assert len(sent.input_ids) + sent.sampling["max_new_tokens"] == 256


async def test_chat_stop_string_and_logprobs(stack):
    out = (
        await post(
            stack,
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "Hi"}],
            stop=["wor"],
            logprobs=True,
            top_logprobs=2,
            max_tokens=30,
        )
    ).json()
    choice = out["choices"][0]
    assert choice["message"]["content"] == "Hello " and choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == "wor"
    first = choice["logprobs"]["content"][0]
    assert first == {
        "token": "H",
        "logprob": -0.5,
        "bytes": [72],
        "top_logprobs": [
            {"token": "H", "logprob": -0.5, "bytes": [72]},
            {"token": "I", "logprob": -1.5, "bytes": [73]},
        ],
    }


async def test_chat_stream_role_deltas_finish_usage_done(stack):
    r = await post(
        stack,
        "/v1/chat/completions",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=7,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"]["completion_tokens"] == 14
    chunks = events[:-2]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == DEFAULT_SCRIPT[:7]
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])


async def test_chat_extra_fields_ignored(stack):
    out = (
        await post(
            stack,
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=1,
            user="u1",
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.1,
            temperature=0.7,
            top_p=0.9,
            top_k=20,
            min_p=0.05,
            repetition_penalty=1.1,
            response_format={"type": "text"},
            tools=None,
            parallel_tool_calls=False,
            logit_bias={"50": 1},
            chat_template_kwargs={"enable_thinking": False},
            ignore_eos=True,
            stop_token_ids=[7],
        )
    ).json()
    assert out["choices"][0]["message"]["content"] == "H"
    sampling = stack.engine.generate_reqs()[0].sampling
    assert sampling["top_k"] == 20 and sampling["seed"] == 7 and sampling["ignore_eos"] is True


async def test_openai_request_named_by_rid_can_be_aborted_by_it(stack):
    """The router names OpenAI requests with ``rid`` so it can abort them on either server."""
    out = (
        await post(
            stack,
            "/v1/chat/completions",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=2,
            rid="router-7",
        )
    ).json()
    assert out["id"] == "router-7"
    assert [r.rid for r in stack.engine.generate_reqs()] == ["router-7"]
