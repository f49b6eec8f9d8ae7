"""Prefill's bootstrap server and decode's client for it.

The bootstrap server (``--disaggregation-bootstrap-port``, default 8998) is the
one address decode learns from a request (``bootstrap_host``/``bootstrap_port``).
Decode handshakes there once per prefill, then sends per-room transfer requests
and aborts, and heartbeats it so that a dead prefill fails decode's pending rooms
instead of leaving them waiting for bytes that will never come.

Both take the ``--disaggregation-secret``: with it, a stranger that cannot seal
its messages (``auth.py``) can neither handshake nor send room messages.

Under DP attention a prefill server runs one engine (and ``KVManager``) per DP
rank, each in its own process, behind the one public bootstrap port: DP rank
0's server answers it and forwards to the other ranks' private servers
(``forward_to``). Every DP rank accepts each handshake; a room's transfer
request and abort go to DP rank ``room % dp_size``, where the front end sent
the room's request.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Protocol

from pdcore.disaggregation.auth import to_key
from pdcore.disaggregation.control import ControlError, ControlServer, request
from pdcore.disaggregation.protocol import (
    Abort,
    EndpointInfo,
    ErrorReply,
    Handshake,
    HandshakeError,
    HandshakeReply,
    Heartbeat,
    HeartbeatReply,
    Message,
    TransferRequest,
    check_compat,
)
from pdcore.disaggregation.transfer import TransferError
from pdcore.envs import DisaggregationEnv

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_PORT = 8998
DEFAULT_REQUEST_TIMEOUT_S = 5.0


class PrefillEndpoint(Protocol):
    """What the bootstrap server needs from a prefill ``KVManager`` (one per TP rank)."""

    tp_rank: int

    def accept_peer(self, peer: EndpointInfo) -> EndpointInfo: ...

    def on_transfer_request(self, msg: TransferRequest) -> Message: ...

    def on_abort(self, msg: Abort) -> Message: ...


class BootstrapServer:
    """Routes decode's messages to the prefill rank they handshook with."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_BOOTSTRAP_PORT,
        secret: str | bytes | None = None,
    ):
        self.server_id = uuid.uuid4().hex
        self._ranks: dict[int, PrefillEndpoint] = {}
        self._peers: dict[str, PrefillEndpoint] = {}
        self._lock = threading.Lock()
        self._key = to_key(secret)
        self._dp_ranks: list[str] = []  # DP ranks 1.. (their private servers' host:port)
        self._control = ControlServer(host, port, self._on_message, self._key)
        self.port = self._control.port

    def register(self, endpoint: PrefillEndpoint) -> None:
        with self._lock:
            self._ranks[endpoint.tp_rank] = endpoint

    def forward_to(self, dp_ranks: list[str]) -> None:
        """DP attention: the private bootstrap servers of DP ranks 1, 2, ... in order."""
        self._dp_ranks = list(dp_ranks)

    def close(self) -> None:
        self._control.close()

    def _on_message(self, msg: Message) -> Message:
        if isinstance(msg, Heartbeat):
            return HeartbeatReply(self.server_id)
        if isinstance(msg, Handshake):
            reply = self._handshake(msg.peer)
            for rank, addr in enumerate(self._dp_ranks, 1):
                if isinstance(reply, ErrorReply):
                    break
                other = self._forward(rank, addr, msg)
                if not isinstance(other, HandshakeReply):
                    reply = other
            return reply
        if isinstance(msg, TransferRequest | Abort) and self._dp_ranks:
            rank = msg.room % (len(self._dp_ranks) + 1)
            if rank:
                return self._forward(rank, self._dp_ranks[rank - 1], msg)
        if isinstance(msg, TransferRequest | Abort):
            peer_id = msg.decode_peer_id if isinstance(msg, TransferRequest) else msg.sender_id
            with self._lock:
                endpoint = self._peers.get(peer_id)
            if endpoint is None:
                return ErrorReply(f"decode peer {peer_id!r} has not handshaken", "unknown_peer")
            if isinstance(msg, TransferRequest):
                return endpoint.on_transfer_request(msg)
            return endpoint.on_abort(msg)
        return ErrorReply(f"bootstrap server does not take {type(msg).__name__}", "bad_request")

    def _forward(self, dp_rank: int, addr: str, msg: Message) -> Message:
        try:
            reply = request(addr, msg, DEFAULT_REQUEST_TIMEOUT_S, self._key)
        except ControlError as e:
            return ErrorReply(f"prefill DP rank {dp_rank} unreachable: {e}")
        if isinstance(reply, ErrorReply):
            return ErrorReply(f"prefill DP rank {dp_rank}: {reply.message}", reply.code)
        return reply

    def _handshake(self, peer: EndpointInfo) -> Message:
        with self._lock:
            endpoint = self._ranks.get(peer.tp_rank)
        if endpoint is None:
            return ErrorReply(f"this prefill has no TP rank {peer.tp_rank}", "mismatch")
        try:
            info = endpoint.accept_peer(peer)
        except HandshakeError as e:
            return ErrorReply(str(e), "mismatch")
        except TransferError as e:
            return ErrorReply(f"prefill cannot connect to decode's transfer engine: {e}")
        with self._lock:
            self._peers[peer.instance_id] = endpoint
        return HandshakeReply(info, self.server_id)


class _Peer:
    def __init__(self, addr: str):
        self.addr = addr
        self.info: EndpointInfo | None = None
        self.server_id = ""
        self.failures = 0
        self.lock = threading.Lock()


class BootstrapClient:
    """Decode's view of its prefill peers: cached handshakes and heartbeats.

    ``on_peer_lost(addr, reason, may_write)`` is called from the heartbeat thread
    when a peer misses ``heartbeat_max_failure`` heartbeats in a row
    (``may_write``: it may only be frozen or cut off, and still write) or restarted
    (the old process is gone); the cached handshake is dropped so the next room
    handshakes afresh.
    """

    def __init__(
        self,
        local: EndpointInfo,
        env: DisaggregationEnv,
        on_peer_lost: Callable[[str, str, bool], None],
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        secret: str | bytes | None = None,
    ):
        self.local = local
        self._key = to_key(secret)
        self.env = env
        self.request_timeout = request_timeout
        self._on_peer_lost = on_peer_lost
        self._peers: dict[str, _Peer] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name="pd-heartbeat", daemon=True
        )
        self._thread.start()

    def _peer(self, addr: str) -> _Peer:
        with self._lock:
            return self._peers.setdefault(addr, _Peer(addr))

    def handshake(self, addr: str) -> EndpointInfo:
        """Prefill's info, handshaking on first use; raises ``HandshakeError``/``ControlError``."""
        peer = self._peer(addr)
        with peer.lock:
            if peer.info is not None:
                return peer.info
            reply = request(addr, Handshake(self.local), self.request_timeout, self._key)
            if isinstance(reply, ErrorReply):
                raise HandshakeError(f"prefill {addr} refused the handshake: {reply.message}")
            if not isinstance(reply, HandshakeReply):
                raise HandshakeError(f"prefill {addr} answered {type(reply).__name__}")
            check_compat(reply.peer, self.local)
            peer.info, peer.server_id, peer.failures = reply.peer, reply.server_id, 0
            return reply.peer

    def send(self, addr: str, msg: TransferRequest | Abort) -> Message:
        """Send a room message; re-handshake once if prefill forgot us (it restarted)."""
        self.handshake(addr)
        reply = request(addr, msg, self.request_timeout, self._key)
        if isinstance(reply, ErrorReply) and reply.code == "unknown_peer":
            log.info("prefill %s does not know us (it restarted); handshaking again", addr)
            self.invalidate(addr)
            self.handshake(addr)
            reply = request(addr, msg, self.request_timeout, self._key)
        if isinstance(reply, ErrorReply):
            raise ControlError(f"prefill {addr} rejected {type(msg).__name__}: {reply.message}")
        return reply

    def invalidate(self, addr: str) -> None:
        peer = self._peer(addr)
        with peer.lock:
            peer.info, peer.failures = None, 0

    def online_peers(self) -> list[str]:
        with self._lock:
            return [a for a, p in self._peers.items() if p.info is not None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _heartbeat_loop(self) -> None:
        interval = self.env.heartbeat_interval
        while not self._stop.wait(interval):
            for addr in self.online_peers():
                self._beat(addr, timeout=min(interval, self.request_timeout))

    def _beat(self, addr: str, timeout: float) -> None:
        peer = self._peer(addr)
        lost, may_write = "", False
        try:
            reply = request(addr, Heartbeat(self.local.instance_id), timeout, self._key)
        except ControlError as e:
            with peer.lock:
                peer.failures += 1
                if peer.info is not None and peer.failures >= self.env.heartbeat_max_failure:
                    lost = f"prefill {addr} offline: {peer.failures} heartbeats failed ({e})"
                    peer.info, peer.failures = None, 0
                    may_write = not isinstance(e.__cause__, ConnectionRefusedError)
        else:
            with peer.lock:
                peer.failures = 0
                if isinstance(reply, HeartbeatReply) and reply.server_id != peer.server_id:
                    lost = f"prefill {addr} restarted; its rooms are gone"
                    peer.info = None
        if lost:
            log.warning("%s", lost)
            self._on_peer_lost(addr, lost, may_write)
