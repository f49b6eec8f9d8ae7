"""``--api-key`` for servers and the router: OpenAI-style ``Authorization: Bearer KEY``.

A plain ASGI middleware (no request objects, one scan of the raw headers and a
constant-time compare), so the router's hot path stays cheap. As in SGLang,
liveness and scraping paths stay open, and CORS preflights (OPTIONS) pass. The
key is held only as the expected header bytes: never logged, never in a reply.
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = frozenset(("/health", "/health_generate", "/metrics"))
_AUTHORIZATION = b"authorization"


def bearer(key: str) -> str:
    return f"Bearer {key}"


def _unauthorized(message: str) -> bytes:
    error = {"message": message, "type": "authentication_error", "param": None, "code": 401}
    return json.dumps({"error": error}).encode()


_MISSING = _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
_WRONG = _unauthorized("invalid API key")


class ApiKeyMiddleware:
    """Answers 401 (OpenAI error body) unless the request carries the key."""

    def __init__(self, app, key: str, open_paths=OPEN_PATHS):
        self.app = app
        self.expected = bearer(key).encode("latin-1")
        self.open_paths = open_paths

    def allows(self, scope) -> bool | None:
        """True: the key matches or the path is open; False: wrong key; None: no key."""
        if scope["path"] in self.open_paths or scope.get("method") == "OPTIONS":
            return True
        for name, value in scope["headers"]:
            if name.lower() == _AUTHORIZATION:
                return hmac.compare_digest(value, self.expected)
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ok = self.allows(scope)
        if ok:
            return await self.app(scope, receive, send)
        body = _MISSING if ok is None else _WRONG
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
