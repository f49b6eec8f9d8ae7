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
MAX_SKEW_S = 60.0
_HEADER = struct.Struct(">4sQ16s32s")
HEADER_BYTES = _HEADER.size
SECRET_FLAG = "--disaggregation-secret"
UNAUTHENTICATED = "PD control message not authenticated"


class AuthError(PdcoreError):
    """A sealed message failed verification (or a plain one came where a sealed one must)."""


def is_sealed(data: bytes) -> bool:
    return data[:4] == MAGIC


def to_key(secret: str | bytes | None) -> bytes | None:
    """The HMAC key for ``secret`` (None or empty: authentication off)."""
    if not secret:
        return None
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _mac(key: bytes, ts: int, nonce: bytes, payload: bytes) -> bytes:
    h = hmac.new(key, MAGIC, hashlib.sha256)
    h.update(struct.pack(">Q", ts))
    h.update(nonce)
    h.update(payload)
    return h.digest()


def seal(key: bytes, payload: bytes, now: float | None = None) -> bytes:
    """``payload`` wrapped with a fresh timestamp, nonce and MAC."""
    ts = int((time.time() if now is None else now) * 1000)
    nonce = os.urandom(16)
    return _HEADER.pack(MAGIC, ts, nonce, _mac(key, ts, nonce, payload)) + payload


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
    if len(data) < HEADER_BYTES:
        raise AuthError(f"{UNAUTHENTICATED}: truncated envelope ({len(data)} bytes)")
    _, ts, nonce, mac = _HEADER.unpack_from(data)
    payload = data[HEADER_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, ts, nonce, payload)):
        raise AuthError(
            f"{UNAUTHENTICATED}: bad MAC; prefill and decode must be started with "
            f"the same {SECRET_FLAG} (or PDCORE_DISAGGREGATION_SECRET)"
        )
    now = time.time() if now is None else now
    skew = now - ts / 1000
    if abs(skew) > max_skew_s:
        raise AuthError(
            f"{UNAUTHENTICATED}: timestamp is {skew:+.0f}s off this clock "
            f"(limit {max_skew_s:g}s): a stale or replayed message, or unsynchronized clocks"
        )
    if guard is not None and not guard.first_time(nonce, now):
        raise AuthError(f"{UNAUTHENTICATED}: replayed message (nonce seen before)")
    return payload


def unexpected_seal() -> str:
    """The refusal of a sealed message by a side that has no secret."""
    return (
        f"{UNAUTHENTICATED}: the peer sends authenticated messages but this side has "
        f"no {SECRET_FLAG}; set the same {SECRET_FLAG} on prefill and decode"
    )
