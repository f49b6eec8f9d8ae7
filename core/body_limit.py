"""``--max-payload-size`` for servers and the router: request bodies over it are a 413.

A plain ASGI middleware, so the limit holds before any handler buffers the body:
a ``Content-Length`` over the limit is refused before a byte of the body is read;
a body without one (chunked) is counted as it arrives and cut off as soon as it
passes the limit (the handler then sees the client go away, and whatever it
answers is dropped in favour of the 413). The error body is OpenAI's shape.
"""

from __future__ import annotations

import json

# Bodies are buffered and parsed whole (a JSON token list costs ~10x its size in
# Python objects), so the default stays well under sgl-router's 512 MiB while a
# 1M-token prompt as a JSON token list (~8 MiB) fits many times over.
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
_CONTENT_LENGTH = b"content-length"


def too_large_body(limit: int) -> bytes:
    error = {
        "message": f"request body is larger than {limit} bytes (the server's --max-payload-size)",
        "type": "invalid_request_error",
        "param": None,
        "code": 413,
    }
    return json.dumps({"error": error}).encode()


class BodyLimitMiddleware:
    """Answers 413 to a request whose body is over ``limit`` bytes."""

    def __init__(self, app, limit: int = DEFAULT_MAX_PAYLOAD_SIZE):
        self.app = app
        self.limit = limit
        self.error = too_large_body(limit)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.limit:
            return await self._refuse(send)
        state = {"received": 0, "started": False, "refused": False}

        async def counted_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["refused"] = True
                    if not state["started"]:
                        await self._refuse(send)
                        state["started"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            if state["refused"]:
                return  # the 413 went out instead
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.error)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.error})


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name.lower() == _CONTENT_LENGTH:
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser has already refused a bad one
    return None
