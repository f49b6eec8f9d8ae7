"""Send any Python value as a JSON body and check that the answer is a clean one.

``json.dumps`` defaults on purpose: ``NaN``/``Infinity`` go out as those literals
(Python's parser, and so FastAPI's, reads them) and lone surrogates as ``\\udXXX``
escapes; httpx's own ``json=`` refuses both.
"""

from __future__ import annotations

import json

import httpx
from server.harness import sse_events


def post(server, path: str, body, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("content-type", "application/json")
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60)


def clean(response: httpx.Response) -> object:
    """Assert a 200 (JSON or a finished SSE stream) or a 4xx JSON error; return the body.

    A 200 stream must end with ``[DONE]`` and carry no error event: hostile input
    has to be refused before the first byte, where it still gets its status code.
    """
    status, ctype = response.status_code, response.headers.get("content-type", "")
    assert status < 500, f"{status}: {response.text[:500]}"
    if status == 200 and ctype.startswith("text/event-stream"):
        events = sse_events(response.text)
        assert events and events[-1] == "[DONE]", response.text[-300:]
        errors = [e for e in events[:-1] if "error" in e]
        assert not errors, errors
        return events
    assert ctype.startswith("application/json"), (status, ctype, response.text[:300])
    body = response.json()
    if status != 200:
        error = body["error"]
        assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    return body
