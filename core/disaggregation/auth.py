"""HMAC envelope for PD control messages (``--disaggregation-secret``).

Without a shared secret anyone who can reach a bootstrap server or a notice
endpoint could register as a decode peer, point prefill's writes at its pages or
fail other people's rooms. With one, every control message (and every in-band
notice a transfer engine carries) is sealed as::

    MAGIC(4) | timestamp_ms(8, big-endian) | nonce(16) | HMAC-SHA256(32) | payload

The MAC covers magic, timestamp, nonce and payload. ``open_sealed`` checks it in
constant time before the payload is decoded, refuses messages older or newer
than ``MAX_SKEW_S`` and nonces it has already seen inside that window, so a
captured message cannot be replayed. The secret itself never leaves this module
in any string (errors, logs, reprs).

A reply is bound to the request it answers, so a sealed reply recorded for one
request cannot pass as the answer to another (nor a request as a reply)::

    REPLY_MAGIC(4) | timestamp_ms(8) | nonce(16) | request_nonce(16) | HMAC-SHA256(32) | payload

The MAC also covers ``request_nonce``; ``open_reply`` refuses a reply whose
bound nonce is not the one the caller sent, like a bad MAC, and (with a guard)
a reply nonce it has already seen.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict

from pdcore.errors import PdcoreError

MAGIC = b"PDA1"  # a msgpack control message starts with a map byte (0x8X): never this
REPLY_MAGIC = b"PDR1"  # a reply: a request envelope never opens as one, nor the reverse
MAX_SKEW_S = 60.0
NONCE_BYTES = 16
_HEADER = struct.Struct(">4sQ16s32s")
HEADER_BYTES = _HEADER.size
_REPLY_HEADER = struct.Struct(">4sQ16s16s32s")
REPLY_HEADER_BYTES = _REPLY_HEADER.size
SECRET_FLAG = "--disaggregation-secret"
UNAUTHENTICATED = "PD control message not authenticated"


class AuthError(PdcoreError):
    """A sealed message failed verification (or a plain one came where a sealed one must)."""


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` is an envelope (a request's or a reply's), not plain msgpack."""
    return data[:4] in (MAGIC, REPLY_MAGIC)


def to_key(secret: str | bytes | None) -> bytes | None:
    """The HMAC key for ``secret`` (None or empty: authentication off)."""
    if not secret:
        return None
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _mac(key: bytes, ts: int, nonce: bytes, payload: bytes, magic: bytes = MAGIC) -> bytes:
    h = hmac.new(key, magic, hashlib.sha256)
    h.update(struct.pack(">Q", ts))
    h.update(nonce)
    h.update(payload)
    return h.digest()


def _timestamp_ms(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


def seal(key: bytes, payload: bytes, now: float | None = None) -> bytes:
    """``payload`` wrapped with a fresh timestamp, nonce and MAC."""
    ts = _timestamp_ms(now)
    nonce = os.urandom(NONCE_BYTES)
    return _HEADER.pack(MAGIC, ts, nonce, _mac(key, ts, nonce, payload)) + payload


def nonce_of(sealed: bytes) -> bytes:
    """The nonce of a request envelope (what its reply must be bound to)."""
    return _HEADER.unpack_from(sealed)[2]


def seal_reply(key: bytes, payload: bytes, request_nonce: bytes, now: float | None = None) -> bytes:
    """``payload`` sealed as the reply to the request whose nonce is ``request_nonce``."""
    if len(request_nonce) != NONCE_BYTES:
        raise ValueError(f"a request nonce has {NONCE_BYTES} bytes, not {len(request_nonce)}")
    ts = _timestamp_ms(now)
    nonce = os.urandom(NONCE_BYTES)
    mac = _mac(key, ts, nonce + request_nonce, payload, REPLY_MAGIC)
    return _REPLY_HEADER.pack(REPLY_MAGIC, ts, nonce, request_nonce, mac) + payload


class ReplayGuard:
    """Nonces seen within the skew window; a repeat is a replay."""

    def __init__(self, window_s: float = MAX_SKEW_S):
        self.window_s = window_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, nonce: bytes, now: float) -> bool:
        with self._lock:
            horizon = now - 2 * self.window_s  # a timestamp this old is refused anyway
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if seen_at >= horizon:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def open_sealed(
    key: bytes,
    data: bytes,
    guard: ReplayGuard | None = None,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> bytes:
    """The payload of a sealed message; raises ``AuthError`` saying what is wrong."""
    if not is_sealed(data):
        raise AuthError(
            f"{UNAUTHENTICATED}: it carries no MAC, but this side requires "
            f"{SECRET_FLAG}; set the same {SECRET_FLAG} on prefill and decode"
        )
    if data[:4] == REPLY_MAGIC:
        raise AuthError(f"{UNAUTHENTICATED}: a reply envelope where a request must be")
    if len(data) < HEADER_BYTES:
        raise AuthError(f"{UNAUTHENTICATED}: truncated envelope ({len(data)} bytes)")
    _, ts, nonce, mac = _HEADER.unpack_from(data)
    payload = data[HEADER_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, ts, nonce, payload)):
        raise AuthError(
            f"{UNAUTHENTICATED}: bad MAC; prefill and decode must be started with "
            f"the same {SECRET_FLAG} (or PDCORE_DISAGGREGATION_SECRET)"
        )
    _check_fresh(ts, nonce, guard, now, max_skew_s)
    return payload


def _check_fresh(
    ts: int, nonce: bytes, guard: ReplayGuard | None, now: float | None, max_skew_s: float
) -> None:
    now = time.time() if now is None else now
    skew = now - ts / 1000
    if abs(skew) > max_skew_s:
        raise AuthError(
            f"{UNAUTHENTICATED}: timestamp is {skew:+.0f}s off this clock "
            f"(limit {max_skew_s:g}s): a stale or replayed message, or unsynchronized clocks"
        )
    if guard is not None and not guard.first_time(nonce, now):
        raise AuthError(f"{UNAUTHENTICATED}: replayed message (nonce seen before)")


def open_reply(
    key: bytes,
    data: bytes,
    request_nonce: bytes,
    guard: ReplayGuard | None = None,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> bytes:
    """The payload of a sealed reply to the request whose nonce is ``request_nonce``.

    Raises ``AuthError`` for anything but a reply sealed with ``key``, bound to that
    request, fresh and (with ``guard``) not seen before."""
    if data[:4] != REPLY_MAGIC:
        if data[:4] == MAGIC:
            raise AuthError(
                f"{UNAUTHENTICATED}: a request envelope where a sealed reply must be "
                "(a request played back, or a peer running an older pdcore)"
            )
        raise AuthError(f"{UNAUTHENTICATED}: no reply envelope where a sealed reply must be")
    if len(data) < REPLY_HEADER_BYTES:
        raise AuthError(f"{UNAUTHENTICATED}: truncated reply envelope ({len(data)} bytes)")
    _, ts, nonce, bound, mac = _REPLY_HEADER.unpack_from(data)
    payload = data[REPLY_HEADER_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, ts, nonce + bound, payload, REPLY_MAGIC)):
        raise AuthError(
            f"{UNAUTHENTICATED}: bad MAC on the reply; prefill and decode must be started "
            f"with the same {SECRET_FLAG} (or PDCORE_DISAGGREGATION_SECRET)"
        )
    if not hmac.compare_digest(bound, request_nonce):
        raise AuthError(
            f"{UNAUTHENTICATED}: the reply answers another request (a recorded reply played back)"
        )
    _check_fresh(ts, nonce, guard, now, max_skew_s)
    return payload


def unexpected_seal() -> str:
    """The refusal of a sealed message by a side that has no secret."""
    return (
        f"{UNAUTHENTICATED}: the peer sends authenticated messages but this side has "
        f"no {SECRET_FLAG}; set the same {SECRET_FLAG} on prefill and decode"
    )
