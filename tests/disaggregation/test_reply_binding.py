"""``--disaggregation-secret``: a sealed reply answers one request, once.

Spec: with a secret, a reply is sealed bound to the nonce of the request it
answers. The caller refuses, like a bad MAC (``ControlError`` naming the bad
seal), a reply recorded for another request, a reply played back a second time
and a request envelope echoed back as a reply. Sealed traffic still flows, and
without a secret replies stay plain msgpack, as in SGLang.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from pdcore.disaggregation import auth
from pdcore.disaggregation.auth import AuthError, ReplayGuard, to_key
from pdcore.disaggregation.control import PATH, ControlError, ControlServer, request
from pdcore.disaggregation.protocol import Ack, Heartbeat, HeartbeatReply, decode, encode

KEY = to_key("reply-binding-secret")


class ReplyRecorder:
    """A man in the middle: forwards a request to ``upstream`` and records the raw
    reply, or answers with a recorded reply (``play_back``) or with the request's own
    bytes (``echo``) instead."""

    def __init__(self, upstream: str):
        recorder = self
        self.upstream = upstream
        self.recorded: list[bytes] = []
        self.mode = "forward"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = recorder.answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/msgpack")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, body: bytes) -> bytes:
        if self.mode == "echo":
            return body
        if self.mode == "play_back":
            return self.recorded[-1]
        host, port = self.upstream.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", PATH, body)
            reply = conn.getresponse().read()
        finally:
            conn.close()
        self.recorded.append(reply)
        return reply

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def sealed_peer():
    """A sealed control server answering every message with a ``HeartbeatReply``
    that names the message's sender, behind a ``ReplyRecorder``."""
    server = ControlServer("127.0.0.1", 0, lambda m: HeartbeatReply(m.sender_id), KEY)
    recorder = ReplyRecorder(server.address)
    yield recorder
    recorder.close()
    server.close()


def test_sealed_requests_get_their_own_reply(sealed_peer):
    for sender in ("decode-a", "decode-b"):
        reply = request(sealed_peer.address, Heartbeat(sender), 5, KEY)
        assert reply == HeartbeatReply(sender), "sealed traffic must still flow, reply by reply"


def test_a_reply_recorded_for_one_request_is_refused_as_the_answer_to_another(sealed_peer):
    assert request(sealed_peer.address, Heartbeat("request-a"), 5, KEY) == HeartbeatReply(
        "request-a"
    )
    sealed_peer.mode = "play_back"
    with pytest.raises(ControlError, match=r"bad seal.*answers another request"):
        reply = request(sealed_peer.address, Heartbeat("request-b"), 5, KEY)
        pytest.fail(f"request B accepted the reply sealed for request A: {reply}")


def test_a_reply_played_back_twice_is_refused_even_for_a_repeated_request_nonce(
    sealed_peer, monkeypatch
):
    """Defence in depth: were the request nonce ever to repeat (here every nonce
    is the same), a recorded reply would be bound right; its own nonce must still
    give the replay away."""
    monkeypatch.setattr(auth, "os", SimpleNamespace(urandom=lambda n: b"\x07" * n))
    assert request(sealed_peer.address, Heartbeat("d"), 5, KEY) == HeartbeatReply("d")
    sealed_peer.mode = "play_back"
    with pytest.raises(ControlError, match=r"bad seal.*replayed"):
        reply = request(sealed_peer.address, Heartbeat("d"), 5, KEY)
        pytest.fail(f"a reply played back a second time was accepted: {reply}")


def test_a_request_echoed_back_is_not_a_reply(sealed_peer):
    sealed_peer.mode = "echo"
    with pytest.raises(ControlError, match=r"bad seal.*request envelope"):
        reply = request(sealed_peer.address, Heartbeat("d"), 5, KEY)
        pytest.fail(f"the caller took its own sealed request for the reply: {reply}")


def test_without_a_secret_replies_stay_plain_msgpack():
    server = ControlServer("127.0.0.1", 0, lambda m: Ack())
    recorder = ReplyRecorder(server.address)
    try:
        assert request(recorder.address, Heartbeat("d"), 5) == Ack()
        raw = recorder.recorded[-1]
        assert not auth.is_sealed(raw) and decode(raw) == Ack(), "unsealed mode must not change"
    finally:
        recorder.close()
        server.close()


# ---- the envelope -------------------------------------------------------------


def test_open_reply_checks_mac_binding_and_replay():
    request_nonce = b"r" * auth.NONCE_BYTES
    sealed = auth.seal_reply(KEY, encode(Ack()), request_nonce)
    guard = ReplayGuard()
    assert auth.open_reply(KEY, sealed, request_nonce, guard) == encode(Ack())
    with pytest.raises(AuthError, match="replayed"):
        auth.open_reply(KEY, sealed, request_nonce, guard)
    with pytest.raises(AuthError, match="answers another request"):
        auth.open_reply(KEY, sealed, b"s" * auth.NONCE_BYTES)
    with pytest.raises(AuthError, match="bad MAC"):
        auth.open_reply(to_key("another secret"), sealed, request_nonce)
    rebound = sealed[:28] + b"s" * auth.NONCE_BYTES + sealed[44:]
    with pytest.raises(AuthError, match="bad MAC"):
        auth.open_reply(KEY, rebound, b"s" * auth.NONCE_BYTES)
