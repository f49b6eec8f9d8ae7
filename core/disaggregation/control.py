"""Plain HTTP transport for control messages: one msgpack message per POST.

HTTP (stdlib) rather than fire-and-forget sockets because every control message
needs to know whether the peer took it: a refused connection is how prefill
learns decode died and how decode's heartbeats find prefill offline.

With a ``key`` (``--disaggregation-secret``) every body, request and reply, is
sealed (``auth.py``) and verified before it is decoded; a message that fails is
answered with an unsealed ``ErrorReply(code="unauthenticated")`` and reaches no
handler. A sealed reply is bound to the nonce of the request it answers, and the
caller refuses one bound to another request or seen before. Without a key,
messages are plain and unauthenticated (as in SGLang).
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
from pdcore.disaggregation.protocol import ErrorReply, Message, decode, encode
from pdcore.errors import PdcoreError

log = logging.getLogger(__name__)

PATH = "/pdcore/disagg/v1"
MAX_BODY = 16 << 20
# A peer sends each message whole at once; a connection silent this long (a body
# shorter than its Content-Length, an idle keep-alive) is dropped, not a thread held.
READ_TIMEOUT_S = 30.0
CONTENT_TYPE = "application/msgpack"


class ControlError(PdcoreError):
    """The peer could not be reached or answered garbage."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S
    server: _Server

    def do_GET(self):
        body = b"ok" if self.path == "/health" else b"not found"
        self._reply(200 if self.path == "/health" else 404, body, "text/plain")

    def do_POST(self):
        if self.path != PATH:
            self._reply(404, b"not found", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._reply(400, encode(ErrorReply("bad Content-Length", "bad_request")))
            return
        data = self.rfile.read(length)
        key = self.server.key
        try:
            if key is not None:
                sealed, data = data, open_sealed(key, data, self.server.replay_guard)
                request_nonce = nonce_of(sealed)  # the reply is bound to it
            elif is_sealed(data):
                raise AuthError(unexpected_seal())
        except AuthError as e:
            log.warning("refused a PD control message from %s: %s", self.client_address[0], e)
            self._reply(401, encode(ErrorReply(str(e), "unauthenticated")))
            return
        try:
            msg = decode(data)
        except msgspec.DecodeError as e:
            self._reply(400, encode(ErrorReply(f"malformed message: {e}", "bad_request")))
            return
        try:
            reply = self.server.on_message(msg)
        except Exception as e:  # a handler bug must answer, not hang the peer
            log.exception("control handler failed on %s", type(msg).__name__)
            reply = ErrorReply(f"{type(e).__name__}: {e}")
        body = encode(reply)
        self._reply(200, seal_reply(key, body, request_nonce) if key is not None else body)

    def _reply(self, status: int, body: bytes, ctype: str = CONTENT_TYPE) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        log.debug("control %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    on_message: Callable[[Message], Message]
    key: bytes | None = None
    replay_guard: ReplayGuard | None = None


class ControlServer:
    """Serves ``on_message(msg) -> reply`` on ``host:port`` (0 = any free port).

    ``key``: the HMAC key (``auth.to_key``); messages must then be sealed with it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Message], Message],
        key: bytes | None = None,
    ):
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as e:
            raise ControlError(f"cannot listen on {host}:{port}: {e}") from e
        self._server.on_message = on_message
        self._server.key = key
        self._server.replay_guard = ReplayGuard() if key is not None else None
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"pd-control-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# Reply nonces this process has accepted: a reply played back twice is refused
# even if it were bound to a request nonce that repeats (it has its own lock).
_reply_guard = ReplayGuard()


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def request(addr: str, msg: Message, timeout: float, key: bytes | None = None) -> Message:
    """POST ``msg`` to ``addr`` (``host:port``) and return the reply message.

    With ``key`` the message is sealed and the reply must be too, bound to this
    request and not seen before; only an ``ErrorReply`` may come back unsealed (a
    peer that could not verify us cannot seal, and an error can only make things fail).
    """
    host, port = split_addr(addr)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = encode(msg) if key is None else seal(key, encode(msg))
    try:
        conn.request("POST", PATH, body, {"Content-Type": CONTENT_TYPE})
        resp = conn.getresponse()
        data = resp.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException) as e:
        raise ControlError(f"{addr} unreachable: {type(e).__name__}: {e}") from e
    finally:
        conn.close()
    sealed = is_sealed(data)
    if key is not None and sealed:
        try:
            data = open_reply(key, data, nonce_of(body), _reply_guard)
        except AuthError as e:
            raise ControlError(f"{addr} answered with a bad seal: {e}") from e
    try:
        reply = decode(data)
    except msgspec.DecodeError as e:
        raise ControlError(f"{addr} answered HTTP {resp.status} with a malformed body") from e
    if key is not None and not sealed and not isinstance(reply, ErrorReply):
        raise ControlError(f"{addr} answered without authentication (no --disaggregation-secret?)")
    return reply
