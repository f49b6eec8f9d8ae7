"""``reject_lone_surrogates``: a request body with a lone surrogate anywhere is a 400.

Before it, ``"\\ud800"`` in a ``rid``, stop string, ``user`` or any string the
engine gets was a 500 (``UnicodeEncodeError`` from msgpack or the JSON response).
"""

from __future__ import annotations

import json

import pytest
from server.harness import asgi_stack

from pdcore.server.protocol import reject_lone_surrogates

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "data",
    [
        "\ud800",
        ["ok", "a\udfffb"],
        {"\udc00": 1},
        {"sampling_params": {"stop": ["x", "\ud83d"]}},
    ],
)
def test_a_lone_surrogate_anywhere_is_refused(data):
    with pytest.raises(ValueError, match=r"lone surrogate \(U\+D[89A-F]"):
        reject_lone_surrogates(data)


def test_valid_unicode_and_deep_nesting_pass_unchanged():
    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit
        deep = [deep]
    data = {"text": "héllo 😀 \u202e\x00", "x": deep, "n": 1.5}
    assert reject_lone_surrogates(data) is data


BODIES = {
    "/generate": {"input_ids": [5], "rid": "\ud800"},
    "/v1/completions": {"prompt": "Hi", "stop": ["\udfff"]},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "user": "\ud800"},
    "/abort_request": {"rid": "\ud800"},
}


@pytest.mark.parametrize("path", list(BODIES))
async def test_the_api_answers_a_400_naming_the_code_point(path):
    async with asgi_stack() as stack:
        content = json.dumps(BODIES[path]).encode()  # ASCII: the surrogate as \\udXXX
        r = await stack.client.post(
            path, content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert "lone surrogate (U+D" in r.json()["error"]["message"]
        assert stack.engine.generate_reqs() == []
