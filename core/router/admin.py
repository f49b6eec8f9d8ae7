"""Who may change the router's workers: the admin routes and their guard.

Adding a worker hands it a share of the users' prompts and, with
``--worker-api-key``, the workers' key on its first health check; removing one or
profiling them all is as disruptive. So these routes take an admin credential:
``--admin-api-key``, else ``--api-key``. A router with no admin credential keeps
them open only where that is safe: listening on a loopback address and holding
no key at all (a local experiment). Anywhere else they answer 403 naming the
flag to set, so that an anonymous caller can never make the router send the
worker key anywhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from pdcore.api_key import bearer

ADMIN_PATHS = frozenset(("/add_worker", "/remove_worker", "/start_profile", "/stop_profile"))
_AUTHORIZATION = b"authorization"


def is_loopback(host: str) -> bool:
    """Whether a ``--host`` value only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def refusal(admin_key: str | None, any_key: bool, host: str) -> str | None:
    """Why admin routes are closed to everyone, or None when they are not.

    ``admin_key``: the admin credential (None: none configured); ``any_key``: the
    router holds some key (client or worker); ``host``: its ``--host``.
    """
    if admin_key:
        return None
    if any_key:
        return (
            "worker management needs an admin credential: this router holds a worker key, "
            "so start it with --admin-api-key (or --api-key)"
        )
    if not is_loopback(host):
        return (
            f"worker management is refused on a router listening on {host}: start it with "
            "--admin-api-key (or --api-key), or listen on 127.0.0.1"
        )
    return None


def _error(status: int, message: str, kind: str) -> bytes:
    body = {"message": message, "type": kind, "param": None, "code": status}
    return json.dumps({"error": body}).encode()


class AdminGuard:
    """ASGI middleware: ``ADMIN_PATHS`` need ``Authorization: Bearer <admin key>``.

    Other paths go to ``app`` untouched; it must let the admin paths through
    (see ``ApiKeyMiddleware``'s ``open_paths``), as this guard has checked them.
    """

    def __init__(self, app, admin_key: str | None, refused: str | None):
        self.app = app
        self.expected = bearer(admin_key).encode("latin-1") if admin_key else None
        self.refused = _error(403, refused, "permission_error") if refused else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in ADMIN_PATHS:
            return await self.app(scope, receive, send)
        if self.refused is not None:
            return await _answer(send, 403, self.refused)
        if self.expected is None:  # loopback, no key anywhere
            return await self.app(scope, receive, send)
        sent = None
        for name, value in scope["headers"]:
            if name.lower() == _AUTHORIZATION:
                sent = value
                break
        if sent is not None and hmac.compare_digest(sent, self.expected):
            return await self.app(scope, receive, send)
        why = "missing admin API key" if sent is None else "invalid admin API key"
        message = f"{why}: send 'Authorization: Bearer <--admin-api-key, else --api-key>'"
        await _answer(send, 401, _error(401, message, "authentication_error"), bearer=True)


async def _answer(send, status: int, body: bytes, bearer: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
