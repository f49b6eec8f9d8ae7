"""``/openapi.json`` that says what the routes really answer.

FastAPI documents a 422 ``HTTPValidationError`` and a JSON 200 for every route;
this server answers bad input with a 400 in OpenAI's error shape (any error
status, in fact: 401, 404, 405, 503 ...), streams SSE when asked, and has
plain-text and empty 200s. ``install(app)`` rewrites the generated document
once, so clients and schema-driven fuzzers (schemathesis, see tests/fuzz) can
hold the server to it.
"""

from __future__ import annotations

import warnings

from fastapi import FastAPI

ERROR_REF = "#/components/schemas/ErrorResponse"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {},
                "code": {"type": "integer"},
            },
        }
    },
}
_JSON = {"application/json": {"schema": {}}}
# Each SSE event as a client parses it: ``data`` is one JSON chunk or "[DONE]".
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
        }
    }
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}

# path -> status -> content (None: no body) for answers that are not JSON.
CONTENT = {
    "/generate": {"200": {**_JSON, **_SSE}},
    "/v1/completions": {"200": {**_JSON, **_SSE}},
    "/v1/chat/completions": {"200": {**_JSON, **_SSE}},
    "/health": {"200": None},
    "/health_generate": {"200": None},
    "/flush_cache": {"200": _TEXT, "400": _TEXT},
    "/metrics": {"200": _TEXT},
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the corrected document (built once, cached)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # renamed below
                warnings.filterwarnings("ignore", "Duplicate Operation ID")
                document(build())
        return app.openapi_schema

    app.openapi = openapi


def document(schema: dict) -> dict:
    """Correct FastAPI's ``schema`` in place (see module docstring); returns it."""
    error = {
        "description": "Error (OpenAI's shape)",
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }
    seen: set[str] = set()
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = {**error, "description": "Invalid request"}
            responses["default"] = error
            for status, content in CONTENT.get(path, {}).items():
                entry = responses.setdefault(status, dict(error))
                if content is None:
                    entry.pop("content", None)
                else:
                    entry["content"] = content
            # One function serving GET and POST gets one operationId from FastAPI.
            if op.get("operationId") in seen:
                op["operationId"] = f"{op['operationId']}_{method}"
            seen.add(op.get("operationId"))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components["ErrorResponse"] = ERROR_SCHEMA
    return schema
