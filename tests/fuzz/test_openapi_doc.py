"""``/openapi.json`` declares what the server answers (``pdcore.server.openapi_doc``).

Spec: no route documents FastAPI's 422 (bad input is a 400 in OpenAI's error
shape, which every route declares as its default answer); the generation routes
may answer SSE; /health answers an empty 200, /metrics and /flush_cache plain
text; operation ids are unique; every ``$ref`` resolves.
"""

from __future__ import annotations

import json

import pytest
from server.harness import asgi_stack

pytestmark = pytest.mark.anyio


@pytest.fixture
async def doc():
    async with asgi_stack() as stack:
        r = await stack.client.get("/openapi.json")
        assert r.status_code == 200
        yield r.json()


def operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


async def test_errors_are_400s_in_openai_shape_not_422s(doc):
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, method, op in operations(doc):
        assert "422" not in op["responses"], (method, path)
        default = op["responses"]["default"]["content"]["application/json"]["schema"]
        assert default == error_ref, (method, path)
    bad_input = doc["paths"]["/generate"]["post"]["responses"]["400"]
    assert bad_input["content"]["application/json"]["schema"] == error_ref
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["ErrorResponse"]["required"] == ["error"]


async def test_non_json_answers_are_declared(doc):
    paths = doc["paths"]
    for path in ("/generate", "/v1/completions", "/v1/chat/completions"):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, path
    for method in ("get", "post"):
        assert "content" not in paths["/health"][method]["responses"]["200"]
        flush = paths["/flush_cache"][method]["responses"]
        assert set(flush["200"]["content"]) == set(flush["400"]["content"]) == {"text/plain"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


async def test_operation_ids_are_unique_and_refs_resolve(doc):
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    text = json.dumps(doc)
    for name in doc["components"]["schemas"]:
        text = text.replace(f'"#/components/schemas/{name}"', '""')
    assert "#/components/schemas/" not in text, "a $ref to a schema that is not there"


async def test_a_wrong_method_is_a_405_json_error_with_allow():
    async with asgi_stack() as stack:
        r = await stack.client.put("/v1/completions", json={})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"
