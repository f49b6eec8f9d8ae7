"""Targeted hostile input against a real server process (tiny model, 48-token context).

Spec: every request gets a 200 or a 4xx JSON error, never a 5xx, a hang or a
dead server; a value no field can take (NaN, infinity, a lone surrogate) is a
400; the context limit holds exactly (prompt + max new tokens <= context); and
once the requests are answered no request runs and no KV page is held.
"""

from __future__ import annotations

import json

import httpx
import pytest
from fuzz.http_client import clean, post
from fuzz.live_server import CONTEXT
from fuzz.profile import HTTP_EXAMPLES, fuzz_settings
from fuzz.strategies import (
    any_text,
    ascii_text,
    has_surrogate,
    non_finite,
    valid_text,
    values,
)
from hypothesis import given
from hypothesis import strategies as st

IDLE = {"running": 0, "waiting": 0, "used_pages": 0}
USER = [{"role": "user", "content": "Hi"}]
BASE = {
    "/generate": {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4}},
    "/v1/completions": {"prompt": "Hi", "max_tokens": 4},
    "/v1/chat/completions": {"messages": USER, "max_tokens": 4},
}
SAMPLING = [
    "max_new_tokens", "min_new_tokens", "n", "temperature", "top_p", "top_k", "min_p",
    "repetition_penalty", "frequency_penalty", "presence_penalty", "seed", "stop",
    "stop_token_ids", "ignore_eos", "skip_special_tokens", "no_stop_trim",
]  # fmt: skip
GENERATE = [
    "text", "input_ids", "sampling_params", "rid", "stream", "return_logprob",
    "top_logprobs_num", "logprob_start_len", "return_text_in_logprobs", "stream_options",
    "model", "bootstrap_host", "bootstrap_port", "bootstrap_room",
]  # fmt: skip
OPENAI = [
    "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty", "user",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
    "skip_special_tokens", "no_stop_trim", "include_stop_str_in_output", "bootstrap_host",
    "bootstrap_port", "bootstrap_room", "rid",
]  # fmt: skip
FIELDS = {
    "/generate": [*(f"sampling_params.{f}" for f in SAMPLING), *GENERATE],
    "/v1/completions": [*OPENAI, "prompt", "logprobs", "echo"],
    "/v1/chat/completions": [*OPENAI, "messages", "logprobs", "top_logprobs"],
}


def value_at(body: dict, field: str):
    """The value at ``field`` (``a.b`` for a nested one), or a marker if it is not there."""
    for key in field.split("."):
        if not isinstance(body, dict) or key not in body:
            return "<absent>"
        body = body[key]
    return body


def with_field(body: dict, field: str, value) -> dict:
    """A copy of ``body`` with ``field`` (``a.b`` for a nested one) set to ``value``."""
    body = json.loads(json.dumps(body))
    outer, _, inner = field.rpartition(".")
    target = body.setdefault(outer, {}) if outer else body
    if not isinstance(target, dict):  # an earlier change made the parent a non-object
        return body
    target[inner] = value
    return body


@st.composite
def hostile_requests(draw):
    path = draw(st.sampled_from(sorted(BASE)))
    body = BASE[path]
    changes = draw(
        st.lists(st.tuples(st.sampled_from(FIELDS[path]), values), min_size=1, max_size=3)
    )
    for field, value in changes:
        body = with_field(body, field, value)
    return path, body, changes


@fuzz_settings(HTTP_EXAMPLES)
@given(request=hostile_requests())
def test_hostile_field_values_get_a_200_or_a_400(fuzz_server, cases, request):
    path, body, changes = request
    cases()
    response = post(fuzz_server, path, body)
    clean(response)
    # Only values that survived later changes (a parent replaced afterwards drops them).
    kept = [v for f, v in changes if json.dumps(value_at(body, f)) == json.dumps(v)]
    if any(has_surrogate(v) or non_finite(v) for v in kept):
        assert response.status_code == 400, (body, response.text[:300])


@fuzz_settings(HTTP_EXAMPLES)
@given(
    route=st.sampled_from(["/generate", "/v1/completions"]),
    length=st.one_of(st.integers(CONTEXT - 3, CONTEXT + 3), st.sampled_from([0, 1, 10_000])),
    max_new=st.one_of(st.none(), st.integers(0, 6), st.sampled_from([CONTEXT, 2**31, 2**63])),
)
def test_the_context_limit_is_exact(fuzz_server, cases, route, length, max_new):
    """A prompt of ``length`` ids: served iff 0 < length < context and, when the
    client set max tokens, length + max <= context; never more tokens than that."""
    cases()
    ids = [65 + i % 26 for i in range(length)]
    sampling = {"ignore_eos": True}
    if route == "/generate":
        key = "max_new_tokens"
        body = {"input_ids": ids, "sampling_params": sampling}
    else:
        key = "max_tokens"
        body = {"prompt": ids, **sampling}
    if max_new is not None:
        (body["sampling_params"] if route == "/generate" else body)[key] = max_new
    response = post(fuzz_server, route, body)
    answer = clean(response)
    fits = 0 < length < CONTEXT and (max_new is None or length + max_new <= CONTEXT)
    assert (response.status_code == 200) == fits, response.text[:300]
    if fits:
        usage = answer["meta_info"] if route == "/generate" else answer["usage"]
        tokens = usage["completion_tokens"]
        assert length + tokens <= CONTEXT
        # /generate's default max_new_tokens is 128 (capped at the context);
        # /v1/completions' default is 16
        default = CONTEXT - length if route == "/generate" else min(16, CONTEXT - length)
        assert tokens == (default if max_new is None else max_new)
    elif length >= CONTEXT or (length and max_new is not None):
        assert "context length" in response.json()["error"]["message"]


@fuzz_settings(HTTP_EXAMPLES)
@given(
    where=st.sampled_from(["stop", "rid", "user", "bootstrap_host", "content", "model"]),
    text=any_text,
    stream=st.booleans(),
)
def test_odd_unicode_is_served_or_refused_with_a_400(fuzz_server, cases, where, text, stream):
    """Lone surrogates are a 400 anywhere; other Unicode is served where it is data
    (stop strings, ids, user, the model name), and prompts outside the tiny 128-id vocabulary are a
    400 naming it."""
    cases()
    if not text:
        text = "x"
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": stream}
    if where == "content":
        body["messages"][0]["content"] = text
    elif where == "model":
        body["model"] = text
    else:
        body[where] = text
    response = post(fuzz_server, "/v1/chat/completions", body)
    answer = clean(response)
    if has_surrogate(text):
        assert response.status_code == 400
        assert "lone surrogate" in response.json()["error"]["message"]
    elif where == "model":  # any name is served, as SGLang does
        assert response.status_code == 200, response.text[:300]
    elif where == "content" and not text.isascii():
        assert response.status_code == 400 and "vocabulary" in answer["error"]["message"]
    else:
        assert response.status_code == 200, response.text[:300]
        if where == "rid":
            first = answer[0] if stream else answer
            assert first["id"] == text


@fuzz_settings(HTTP_EXAMPLES)
@given(stops=st.lists(st.one_of(valid_text, ascii_text), min_size=1, max_size=20))
def test_stop_string_lists_are_checked_whole(fuzz_server, cases, stops):
    """Up to 16 non-empty stop strings are served (any valid Unicode); an empty one
    or more than 16 is a 400."""
    cases()
    body = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 5, "stop": stops}}
    response = post(fuzz_server, "/generate", body)
    clean(response)
    ok = len(stops) <= 16 and all(stops)
    assert response.status_code == (200 if ok else 400), response.text[:300]


def _nested(depth: int, open_: str, close: str, leaf: str = "") -> bytes:
    return (open_ * depth + leaf + close * depth).encode()


J = "application/json"
ONE = b'{"input_ids": [5], "sampling_params": {"max_new_tokens": 1}'  # + more fields + "}"
RAW = {
    # name: (body bytes, content type, status on /generate; the OpenAI routes: always 400)
    "invalid-utf8": (b'{"text": "\xff\xfe Hi"}', J, 400),
    "truncated-json": (b'{"text": "Hi", "sampling_params": {', J, 400),
    "trailing-garbage": (b'{"text": "Hi"} x', J, 400),
    "empty-body": (b"", J, 400),
    "null-body": (b"null", J, 400),
    "string-body": (b'"Hi"', J, 400),
    "nan-literal": (b'{"text": "Hi", "sampling_params": {"top_p": NaN}}', J, 400),
    "infinity-literal": (b'{"input_ids": [5], "top_logprobs_num": -Infinity}', J, 400),
    "5000-digit-int": (b'{"text": "Hi", "sampling_params": {"n": 1' + b"0" * 5000 + b"}}", J, 400),
    "1e400": (b'{"text": "Hi", "sampling_params": {"temperature": 1e400}}', J, 400),
    "nested-100-unknown-field": (ONE + b', "x": ' + _nested(100, "[", "]") + b"}", J, 200),
    "nested-100k-arrays": (ONE + b', "x": ' + _nested(100_000, "[", "]") + b"}", J, 400),
    "nested-100k-objects": (
        b'{"input_ids": [5], "sampling_params": {"x": '
        + _nested(100_000, '{"a":', "}", "1")
        + b"}}",
        J,
        400,
    ),
    "nested-stop": (b'{"input_ids": [5], "sampling_params": {"stop": [[["a"]]]}}', J, 400),
    "8MB-prompt": (b'{"text": "' + b"a" * (8 << 20) + b'"}', J, 400),
    "million-ids": (b'{"input_ids": [' + b",".join([b"5"] * 1_000_000) + b"]}", J, 400),
    "100k-stop-strings": (
        b'{"input_ids": [5], "sampling_params": {"stop": ['
        + b",".join([b'"ab"'] * 100_000)
        + b"]}}",
        J,
        400,
    ),
    "utf16-json": ((ONE + b"}").decode().encode("utf-16"), J, 200),
    "text-plain": (b'{"text": "Hi"}', "text/plain", 400),
    "form-urlencoded": (b"text=Hi", "application/x-www-form-urlencoded", 400),
    "multipart": (
        b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nHi\r\n--x--\r\n',
        "multipart/form-data; boundary=x",
        400,
    ),
    "msgpack": (b"\x81\xa4text\xa2Hi", "application/msgpack", 400),
    "garbage-content-type": (b'{"text": "Hi"}', "%%/;;;=json", 400),
    "json-suffix-content-type": (ONE + b"}", "application/x+json; charset=utf-8", 200),
    "latin1-body": ('{"text": "Hé"}'.encode("latin-1"), "application/json; charset=latin-1", 400),
}


@pytest.mark.parametrize("name", list(RAW))
@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_raw_bodies_get_a_clean_answer(fuzz_server, cases, name, path):
    """Bytes that are not a request body (or a wildly oversized one) are a 400.

    On the OpenAI routes the /generate-shaped bodies lack ``prompt``/``messages``:
    a 400 there too, whatever else is wrong.
    """
    content, ctype, expected = RAW[name]
    cases()
    response = post(fuzz_server, path, content, **{"content-type": ctype})
    clean(response)
    status = expected if path == "/generate" else 400
    assert response.status_code == status, response.text[:300]


def test_a_huge_batch_times_n_is_served_and_freed(fuzz_server, cases):
    """One request may carry thousands of sequences (200 prompts x n=16 here)."""
    cases()
    body = {
        "input_ids": [[5, 6, i % 100] for i in range(200)],
        "sampling_params": {"n": 16, "max_new_tokens": 1},
    }
    response = post(fuzz_server, "/generate", body)
    assert response.status_code == 200 and len(clean(response)) == 3200
    assert fuzz_server.idle() == IDLE


def test_one_bad_prompt_in_a_huge_batch_sends_nothing(fuzz_server, cases):
    cases()
    prompts = [[5, 6]] * 1000 + [[5, 999]]
    response = post(fuzz_server, "/generate", {"input_ids": prompts, "sampling_params": {"n": 16}})
    assert response.status_code == 400 and "999" in clean(response)["error"]["message"]
    assert fuzz_server.load() == IDLE


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_a_huge_batch_frees_it(fuzz_server, cases, stream):
    """The client gives up after 1 s on 32,000 sequences: all are aborted, no page kept."""
    cases()
    sampling = {"n": 16, "max_new_tokens": 40, "ignore_eos": True}
    body = {
        "input_ids": [[5, 6, i % 100] for i in range(2000)],
        "sampling_params": sampling,
        "stream": stream,
    }
    with pytest.raises(httpx.TimeoutException):
        with httpx.stream("POST", f"{fuzz_server.url}/generate", json=body, timeout=1.0) as r:
            for _ in r.iter_bytes():
                pass
    assert fuzz_server.idle(timeout=30) == IDLE


def test_a_wrong_method_is_a_405_that_says_allow(fuzz_server):
    response = httpx.get(f"{fuzz_server.url}/generate", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert clean(response)["error"]["type"] == "invalid_request_error"


def test_server_is_idle_and_alive_after_the_hostile_input(fuzz_server):
    assert fuzz_server.alive()
    assert fuzz_server.idle() == IDLE
    assert fuzz_server.get("/health").status_code == 200
