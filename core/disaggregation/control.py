"""Plain HTTP transport for control messages: one msgpack message per POST.

HTTP rather than fire-and-forget sockets because every control message needs to
know whether the peer took it: a refused connection is how prefill learns decode
died and how decode's heartbeats find prefill offline.

The server (``control_server.py``) answers on a fixed pool of threads whatever
the number of connections; the client (``control_client.py``) keeps connections
to each peer open across messages and sends a message a second time only when it
surely did not reach the peer.

With a ``key`` (``--disaggregation-secret``) every body, request and reply, is
sealed (``auth.py``) and verified before it is decoded; a message that fails is
answered with an unsealed ``ErrorReply(code="unauthenticated")`` and reaches no
handler. A sealed reply is bound to the nonce of the request it answers, and the
caller refuses one bound to another request or seen before (a connection carrying
several messages changes none of this). Without a key, messages are plain and
unauthenticated (as in SGLang).
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable

import msgspec

from pdcore.disaggregation.auth import (
    AuthError,
    ReplayGuard,
    is_sealed,
    nonce_of,
    open_reply,
    open_sealed,
    seal,
    seal_reply,
    unexpected_seal,
)
from pdcore.disaggregation.control_client import ConnectionPool
from pdcore.disaggregation.control_server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_WORKERS,
    BoundedHttpServer,
    Reply,
    Request,
)
from pdcore.disaggregation.protocol import ErrorReply, Message, decode, encode
from pdcore.errors import PdcoreError

log = logging.getLogger(__name__)

PATH = "/pdcore/disagg/v1"
MAX_BODY = 16 << 20
# A peer sends each message whole at once; a request not whole this long after its
# first byte, or a keep-alive connection idle this long, is closed.
READ_TIMEOUT_S = 30.0
# The client reuses a connection idle at most this long: well inside the server's
# idle timeout, so a message rarely meets a connection the server is closing.
CLIENT_IDLE_S = READ_TIMEOUT_S / 2
CONTENT_TYPE = "application/msgpack"


class ControlError(PdcoreError):
    """The peer could not be reached or answered garbage."""


class ControlServer:
    """Serves ``on_message(msg) -> reply`` on ``host:port`` (0 = any free port).

    ``key``: the HMAC key (``auth.to_key``); messages must then be sealed with it.
    ``workers``, ``max_connections``, ``idle_timeout``: the server's bounds
    (``control_server.py``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Message], Message],
        key: bytes | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = READ_TIMEOUT_S,
    ):
        self._on_message = on_message
        self._key = key
        self._replay_guard = ReplayGuard() if key is not None else None
        try:
            self._server = BoundedHttpServer(
                host,
                port,
                self._handle,
                workers=workers,
                max_connections=max_connections,
                max_body=MAX_BODY,
                idle_timeout=idle_timeout,
                read_timeout=READ_TIMEOUT_S,
            )
        except OSError as e:
            raise ControlError(f"cannot listen on {host}:{port}: {e}") from e
        self.host = host
        self.port = self._server.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stats(self) -> dict[str, int]:
        """The server's connection and thread counters (``BoundedHttpServer.stats``)."""
        return self._server.stats()

    def close(self) -> None:
        self._server.close()

    def _handle(self, req: Request) -> Reply:
        if req.method == "GET":
            found = req.path == "/health"
            return Reply(200 if found else 404, b"ok" if found else b"not found", "text/plain")
        if req.method != "POST":
            return Reply(501, b"only GET /health and POST are served", "text/plain")
        if req.path != PATH:
            return Reply(404, b"not found", "text/plain")
        if not req.body:
            return _error(400, ErrorReply("bad Content-Length", "bad_request"))
        data = req.body
        try:
            if self._key is not None:
                sealed, data = data, open_sealed(self._key, data, self._replay_guard)
                request_nonce = nonce_of(sealed)  # the reply is bound to it
            elif is_sealed(data):
                raise AuthError(unexpected_seal())
        except AuthError as e:
            log.warning("refused a PD control message from %s: %s", req.client, e)
            return _error(401, ErrorReply(str(e), "unauthenticated"))
        try:
            msg = decode(data)
        except msgspec.DecodeError as e:
            return _error(400, ErrorReply(f"malformed message: {e}", "bad_request"))
        try:
            reply = self._on_message(msg)
        except Exception as e:  # a handler bug must answer, not hang the peer
            log.exception("control handler failed on %s", type(msg).__name__)
            reply = ErrorReply(f"{type(e).__name__}: {e}")
        body = encode(reply)
        if self._key is not None:
            body = seal_reply(self._key, body, request_nonce)
        return Reply(200, body, CONTENT_TYPE)


def _error(status: int, reply: ErrorReply) -> Reply:
    return Reply(status, encode(reply), CONTENT_TYPE)


# Reply nonces this process has accepted: a reply played back twice is refused
# even if it were bound to a request nonce that repeats (it has its own lock).
_reply_guard = ReplayGuard()
# Connections to peers, kept open across messages (it has its own lock).
_pool = ConnectionPool(CLIENT_IDLE_S)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def request(addr: str, msg: Message, timeout: float, key: bytes | None = None) -> Message:
    """POST ``msg`` to ``addr`` (``host:port``) and return the reply message.

    With ``key`` the message is sealed and the reply must be too, bound to this
    request and not seen before; only an ``ErrorReply`` may come back unsealed (a
    peer that could not verify us cannot seal, and an error can only make things fail).

    The connection is kept for the next message to ``addr``; the message is sent a
    second time only when it surely did not reach the peer whole (``control_client``
    says when). ``timeout`` bounds the connect and each wait for the peer; a refused
    connection is a ``ControlError`` caused by ``ConnectionRefusedError``.
    """
    host, port = split_addr(addr)
    body = encode(msg) if key is None else seal(key, encode(msg))
    try:
        status, data = _pool.post(
            host, port, PATH, body, {"Content-Type": CONTENT_TYPE}, timeout, MAX_BODY
        )
    except (OSError, http.client.HTTPException) as e:
        raise ControlError(f"{addr} unreachable: {type(e).__name__}: {e}") from e
    sealed = is_sealed(data)
    if key is not None and sealed:
        try:
            data = open_reply(key, data, nonce_of(body), _reply_guard)
        except AuthError as e:
            raise ControlError(f"{addr} answered with a bad seal: {e}") from e
    try:
        reply = decode(data)
    except msgspec.DecodeError as e:
        raise ControlError(f"{addr} answered HTTP {status} with a malformed body") from e
    if key is not None and not sealed and not isinstance(reply, ErrorReply):
        raise ControlError(f"{addr} answered without authentication (no --disaggregation-secret?)")
    return reply
