"""The control client keeps connections open, and retries only what surely never arrived.

Spec: messages to one peer share one TCP connection. A pooled connection the peer
closed while it sat idle is replaced before anything is sent on it. Once a request
was written whole, nothing is sent again: a reset, an end of stream or a timeout
while waiting for the reply is a ``ControlError`` (the peer may have acted on the
message), and a refused connection still says the peer is gone. Sealed replies stay
bound to their request on a reused connection.

A real ``ControlServer`` in this process; a fault proxy between client and server
counts connections and breaks exchanges.
"""

from __future__ import annotations

import threading
import time

import pytest
from chaos.fault_proxy import Fault, FaultProxy
from disaggregation.test_reply_binding import KEY, ReplyRecorder

from pdcore.disaggregation.control import ControlError, ControlServer, request
from pdcore.disaggregation.protocol import Ack, ChunkDone, Heartbeat, HeartbeatReply

pytestmark = pytest.mark.timeout(60)


class CountingPeer:
    """A control server that counts the messages that reached its handler."""

    def __init__(self, **server_args):
        self.seen: list = []
        self._lock = threading.Lock()
        self.server = ControlServer("127.0.0.1", 0, self._on_message, **server_args)

    def _on_message(self, msg):
        with self._lock:
            self.seen.append(msg)
        return Ack()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def peer_via_proxy():
    peer = CountingPeer()
    proxy = FaultProxy(peer.server.port, "control")
    yield peer, proxy, f"127.0.0.1:{proxy.port}"
    proxy.close()
    peer.close()


def notice(chunk: int) -> ChunkDone:
    return ChunkDone(room=7, chunk=chunk, is_last=False, num_pages=4)


def test_messages_to_one_peer_share_one_connection(peer_via_proxy):
    peer, proxy, addr = peer_via_proxy
    for chunk in range(20):
        assert request(addr, notice(chunk), 5) == Ack()
    snap = proxy.snapshot()
    assert snap["exchanges"] == 20 and len(peer.seen) == 20, snap
    assert snap["connections"] == 1, (
        f"20 messages took {snap['connections']} connections: each message pays a TCP "
        "handshake and the peer a connection"
    )


def test_a_connection_the_server_closed_while_idle_is_replaced():
    peer = CountingPeer(idle_timeout=0.3)
    try:
        assert request(peer.server.address, notice(0), 5) == Ack()
        deadline = time.monotonic() + 5
        while peer.server.stats()["connections_open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peer.server.stats()["connections_open"] == 0, "the idle connection never closed"
        assert request(peer.server.address, notice(1), 5) == Ack(), (
            "a pooled connection the server had closed must be replaced, not fail the message"
        )
        assert peer.server.stats()["connections_accepted"] == 2
        assert len(peer.seen) == 2, f"the message reached the handler {len(peer.seen) - 1} times"
    finally:
        peer.close()


@pytest.mark.parametrize(
    "fault, reached",
    [
        (Fault("reset", after_bytes=0, answer_only=True), True),  # the reply cut
        (Fault("reset", after_bytes=0), False),  # sent whole, lost before the server
    ],
    ids=["reply-reset", "request-reset"],
)
def test_a_reset_after_the_request_was_written_is_not_retried(peer_via_proxy, fault, reached):
    peer, proxy, addr = peer_via_proxy
    assert request(addr, notice(0), 5) == Ack()  # the connection is now pooled
    proxy.arm(fault, match=b"ChunkDone")  # the proxy reads the whole request first
    with pytest.raises(ControlError, match="unreachable"):
        reply = request(addr, notice(1), 5)
        pytest.fail(f"a reset after the request was written was retried: {reply}")
    assert proxy.snapshot()["injected"] == {"reset": 1}
    assert len(peer.seen) == 1 + reached, (
        "a message the peer may have acted on must not be sent again "
        f"(handler saw {[m.chunk for m in peer.seen]})"
    )
    assert proxy.snapshot()["connections"] == 1, "the client opened a connection to resend"
    assert request(addr, notice(2), 5) == Ack(), "the next message takes a fresh connection"
    assert proxy.snapshot()["connections"] == 2


def test_a_reply_that_never_comes_times_out_on_a_reused_connection(peer_via_proxy):
    peer, proxy, addr = peer_via_proxy
    assert request(addr, notice(0), 5) == Ack()
    proxy.arm(Fault("blackhole", hold_s=10))
    start = time.monotonic()
    with pytest.raises(ControlError):
        request(addr, notice(1), 0.5)
    took = time.monotonic() - start
    assert took < 2, f"a silent peer held the caller {took:.1f}s past its 0.5 s timeout"
    assert len(peer.seen) == 1 and proxy.snapshot()["connections"] == 1, "it was retried"


def test_a_peer_that_is_gone_is_still_a_refused_connection():
    """Decode's heartbeats tell a dead prefill (refused) from a frozen one by this."""
    peer = CountingPeer()
    addr = peer.server.address
    assert request(addr, Heartbeat("d"), 5) == Ack()  # pooled
    peer.close()
    with pytest.raises(ControlError, match="unreachable") as err:
        request(addr, Heartbeat("d"), 2)
    assert isinstance(err.value.__cause__, ConnectionRefusedError), (
        f"a closed peer must read as refused, not {type(err.value.__cause__).__name__}"
    )


def test_a_reply_played_back_on_the_reused_connection_is_refused():
    server = ControlServer("127.0.0.1", 0, lambda m: HeartbeatReply(m.sender_id), KEY)
    recorder = ReplyRecorder(server.address)
    proxy = FaultProxy(int(recorder.address.rsplit(":", 1)[1]), "recorder")
    addr = f"127.0.0.1:{proxy.port}"
    try:
        assert request(addr, Heartbeat("request-a"), 5, KEY) == HeartbeatReply("request-a")
        recorder.mode = "play_back"
        with pytest.raises(ControlError, match=r"bad seal.*answers another request"):
            reply = request(addr, Heartbeat("request-b"), 5, KEY)
            pytest.fail(f"request B accepted the reply sealed for request A: {reply}")
        assert proxy.snapshot()["connections"] == 1, "both requests should share a connection"
    finally:
        proxy.close()
        recorder.close()
        server.close()
