"""``--disaggregation-secret``: what the HMAC envelope guarantees, in one process.

Spec: with a secret, a control message reaches a handler only if it carries a
valid MAC made with the same secret, a timestamp within 60 s and a nonce not
seen before; anything else gets ``ErrorReply(code="unauthenticated")`` with a
message naming the flag, and nothing happens. The secret appears in no log line.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from disaggregation.endpoints import endpoint_info

from pdcore.disaggregation import auth
from pdcore.disaggregation.auth import AuthError, ReplayGuard, open_sealed, seal, to_key
from pdcore.disaggregation.bootstrap import BootstrapClient, BootstrapServer
from pdcore.disaggregation.control import PATH, ControlError, ControlServer, request
from pdcore.disaggregation.protocol import (
    Ack,
    EndpointInfo,
    ErrorReply,
    Handshake,
    HandshakeError,
    Heartbeat,
    TransferRequest,
    decode,
    encode,
)
from pdcore.envs import DisaggregationEnv, disaggregation_secret

SECRET = "correct-horse-battery-staple"
DECODE = dict(instance_id="decode-1", kv_buffers=[4096, 8192])
KEY = to_key(SECRET)
ENV = DisaggregationEnv(2, 1, 2.0, 60.0, 2, 30.0)  # heartbeats effectively off


class RecordingPrefill:
    """A prefill rank that records what reached it (so a test can say: nothing did)."""

    tp_rank = 0

    def __init__(self):
        self.peers: list[EndpointInfo] = []
        self.requests: list[TransferRequest] = []

    def accept_peer(self, peer):
        self.peers.append(peer)
        return endpoint_info(**DECODE)

    def on_transfer_request(self, msg):
        self.requests.append(msg)
        return Ack()

    def on_abort(self, msg):
        return Ack()


@pytest.fixture
def bootstrap():
    server = BootstrapServer("127.0.0.1", 0, SECRET)
    prefill = RecordingPrefill()
    server.register(prefill)
    yield f"127.0.0.1:{server.port}", prefill
    server.close()


def post_raw(addr: str, body: bytes) -> tuple[int, object]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", PATH, body)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if auth.is_sealed(data):
        data = auth.open_reply(KEY, data, auth.nonce_of(body))
    return resp.status, decode(data)


# ---- the envelope -------------------------------------------------------------


def test_sealed_payload_opens_only_with_the_same_secret_untampered():
    sealed = seal(KEY, b"payload")
    assert open_sealed(KEY, sealed) == b"payload"
    with pytest.raises(AuthError, match=r"bad MAC.*--disaggregation-secret"):
        open_sealed(to_key("another secret"), sealed)
    tampered = sealed[:-1] + b"X"
    with pytest.raises(AuthError, match="bad MAC"):
        open_sealed(KEY, tampered)
    with pytest.raises(AuthError, match=r"no MAC.*--disaggregation-secret"):
        open_sealed(KEY, b"\x81plain msgpack")


def test_stale_and_replayed_envelopes_are_refused():
    now = time.time()
    with pytest.raises(AuthError, match="stale or replayed"):
        open_sealed(KEY, seal(KEY, b"x", now=now - 61), now=now)
    with pytest.raises(AuthError, match="stale or replayed"):
        open_sealed(KEY, seal(KEY, b"x", now=now + 61), now=now)
    guard = ReplayGuard()
    sealed = seal(KEY, b"x")
    assert open_sealed(KEY, sealed, guard) == b"x"
    with pytest.raises(AuthError, match="replayed message"):
        open_sealed(KEY, sealed, guard)


def test_secret_comes_from_the_pdcore_or_sglang_variable():
    assert disaggregation_secret({}) is None
    assert disaggregation_secret({"SGLANG_DISAGGREGATION_SECRET": "s"}) == "s"
    both = {"SGLANG_DISAGGREGATION_SECRET": "s", "PDCORE_DISAGGREGATION_SECRET": "p"}
    assert disaggregation_secret(both) == "p", "the PDCORE_ spelling must win"


# ---- the transport ------------------------------------------------------------


def test_control_server_with_a_secret_runs_no_handler_for_unsealed_messages(caplog):
    caplog.set_level(logging.DEBUG)
    seen = []
    server = ControlServer("127.0.0.1", 0, lambda m: seen.append(m) or Ack(), KEY)
    try:
        assert request(server.address, Heartbeat("d"), 2, KEY) == Ack()
        assert len(seen) == 1, "an authenticated message must reach the handler"
        for key in (None, to_key("wrong")):
            reply = request(server.address, Heartbeat("d"), 2, key)
            assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
            assert "PD control message not authenticated" in reply.message
        status, reply = post_raw(server.address, encode(Heartbeat("d")))
        assert status == 401 and reply.code == "unauthenticated"
        assert len(seen) == 1, f"unauthenticated messages reached the handler: {seen[1:]}"
    finally:
        server.close()
    assert SECRET not in caplog.text, "the secret was logged"


def test_a_replayed_or_stale_message_is_refused_by_the_server():
    seen = []
    server = ControlServer("127.0.0.1", 0, lambda m: seen.append(m) or Ack(), KEY)
    try:
        captured = seal(KEY, encode(Heartbeat("d")))
        assert post_raw(server.address, captured)[1] == Ack()
        status, reply = post_raw(server.address, captured)
        assert status == 401 and "replayed" in reply.message, reply
        stale = seal(KEY, encode(Heartbeat("d")), now=time.time() - 120)
        status, reply = post_raw(server.address, stale)
        assert status == 401 and "stale" in reply.message, reply
        assert len(seen) == 1, "a replayed or stale message reached the handler"
    finally:
        server.close()


def test_a_side_without_secret_names_the_flag_when_it_gets_sealed_messages():
    server = ControlServer("127.0.0.1", 0, lambda m: Ack())
    try:
        reply = request(server.address, Heartbeat("d"), 2, KEY)
        assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated"
        assert "--disaggregation-secret" in reply.message
    finally:
        server.close()


def test_client_with_a_secret_refuses_an_unsealed_success_reply():
    """A stranger answering in decode's place cannot make a request succeed."""

    class Stranger(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = encode(Ack())
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stranger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        addr = f"127.0.0.1:{server.server_address[1]}"
        assert request(addr, Heartbeat("d"), 2) == Ack()  # without a secret: trusted
        with pytest.raises(ControlError, match="without authentication"):
            request(addr, Heartbeat("d"), 2, KEY)
    finally:
        server.shutdown()
        server.server_close()


# ---- the bootstrap server -----------------------------------------------------


def test_forged_handshake_and_transfer_request_register_nothing(bootstrap):
    addr, prefill = bootstrap
    reply = request(addr, Handshake(endpoint_info(**DECODE)), 2)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
    forged = TransferRequest(room=7, dst_pages=[1, 2], aux_slot=0, decode_peer_id="decode-1")
    reply = request(addr, forged, 2)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
    assert "PD control message not authenticated" in reply.message
    assert prefill.peers == [] and prefill.requests == [], "a forged message was acted on"


def test_right_secret_handshakes_and_sends_room_messages(bootstrap):
    addr, prefill = bootstrap
    client = BootstrapClient(endpoint_info(**DECODE), ENV, lambda *a: None, 2.0, SECRET)
    try:
        assert client.handshake(addr) == endpoint_info(**DECODE)
        request_ = TransferRequest(room=7, dst_pages=[1, 2], aux_slot=0, decode_peer_id="decode-1")
        assert client.send(addr, request_) == Ack()
        assert [p.instance_id for p in prefill.peers] == ["decode-1"]
        assert prefill.requests == [request_]
    finally:
        client.close()


@pytest.mark.parametrize("secret", [None, "not-the-same-secret"])
def test_a_different_secret_fails_the_handshake_naming_the_flag(bootstrap, secret, caplog):
    caplog.set_level(logging.DEBUG)
    addr, prefill = bootstrap
    client = BootstrapClient(endpoint_info(**DECODE), ENV, lambda *a: None, 2.0, secret)
    try:
        with pytest.raises(HandshakeError) as err:
            client.handshake(addr)
    finally:
        client.close()
    message = str(err.value)
    assert "not authenticated" in message and "--disaggregation-secret" in message, message
    assert prefill.peers == [], "a peer with the wrong secret was registered"
    assert SECRET not in caplog.text and "not-the-same-secret" not in caplog.text
