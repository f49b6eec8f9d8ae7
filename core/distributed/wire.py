"""Typed messages between the ranks of a server: msgpack bytes over gloo, never pickle.

Ranks on other nodes reach each other over ``--dist-init-addr``'s network, so
anything one rank sends another is untrusted input until proven otherwise.
``torch.distributed``'s object collectives unpickle what they receive, which
lets whoever can reach a rank run code in it. Here every message is a msgspec
type encoded to bytes and decoded with that exact ``type=``: a peer can make a
rank build only the plain data it expects, and anything else is a ``WireError``.

A broadcast sends its length (one int64), then the bytes (a uint8 tensor); a
gather trades lengths first, then bytes padded to the longest. With a shared
secret (``handshake``) every message carries an HMAC-SHA256 under the key the
ranks agreed on at startup, checked before the bytes are decoded.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec
import torch

from pdcore.distributed.state import session_key, tp
from pdcore.errors import PdcoreError

MAC_BYTES = 32
# A length past this is a corrupt or hostile header, not a step plan.
MAX_MESSAGE_BYTES = 1 << 31


class WireError(PdcoreError):
    """A message from another rank is malformed, unauthenticated or out of order."""


def seal(key: bytes | None, body: bytes) -> bytes:
    """``MAC(32) | body`` under ``key`` (the body unchanged without one)."""
    if key is None:
        return body
    return hmac.new(key, body, hashlib.sha256).digest() + body


def unseal(key: bytes | None, data, what: str) -> memoryview:
    """The body of ``seal``'s output; ``WireError`` when its MAC does not match."""
    view = memoryview(data).cast("B")
    if key is None:
        return view
    if len(view) < MAC_BYTES:
        raise WireError(f"{what}: {len(view)} bytes, too short to carry a MAC")
    body = view[MAC_BYTES:]
    mac = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, bytes(view[:MAC_BYTES])):
        raise WireError(
            f"{what}: bad MAC (a rank without the same --disaggregation-secret, "
            "or bytes altered on the way)"
        )
    return body


def decode(data, type_, what: str):
    """``data`` as exactly ``type_``; anything else is a ``WireError`` naming ``what``."""
    try:
        return msgspec.msgpack.decode(data, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise WireError(f"malformed {what}: {e}") from None


def _to_tensor(data: bytes) -> torch.Tensor:
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _check_length(n: int, what: str) -> int:
    if not 0 <= n <= MAX_MESSAGE_BYTES:
        raise WireError(f"{what}: announced length {n} is not a valid message size")
    return n


# Engine-level collectives run over the attention group: one engine per group
# (the whole TP group without DP attention). Everything below is collective:
# every rank of the group calls it at the same point.


def broadcast_bytes(data: bytes | None = None, what: str = "message") -> memoryview:
    """The leader's ``data`` (sealed when a secret is set) on every rank of its
    engine; followers pass None. Returns the (checked) body."""
    g = tp().attn
    if g.size == 1:
        return memoryview(data)
    import torch.distributed as dist

    src = g.first
    if g.rank == 0:
        payload = seal(session_key(), data)
        dist.broadcast(torch.tensor([len(payload)], dtype=torch.int64), src, g.cpu_group)
        dist.broadcast(_to_tensor(payload), src, g.cpu_group)
        return memoryview(data)
    size = torch.empty(1, dtype=torch.int64)
    dist.broadcast(size, src, g.cpu_group)
    buf = torch.empty(_check_length(int(size.item()), what), dtype=torch.uint8)
    dist.broadcast(buf, src, g.cpu_group)
    return unseal(session_key(), buf.numpy(), what)


def broadcast_msg(obj, type_, what: str):
    """Leader's ``obj`` (a ``type_``) to every rank of its engine; followers pass
    None and get the leader's back, decoded as ``type_`` only."""
    if tp().attn.rank == 0:
        broadcast_bytes(msgspec.msgpack.encode(obj), what)
        return obj
    return decode(broadcast_bytes(None, what), type_, what)


def _all_gather_bytes(data: bytes, size: int, group, what: str) -> list[memoryview]:
    import torch.distributed as dist

    payload = seal(session_key(), data)
    mine = torch.tensor([len(payload)], dtype=torch.int64)
    lens = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(lens, mine, group=group)
    sizes = [_check_length(int(n.item()), what) for n in lens]
    width = max(sizes)
    padded = torch.zeros(width, dtype=torch.uint8)
    padded[: len(payload)] = _to_tensor(payload)
    parts = [torch.empty(width, dtype=torch.uint8) for _ in range(size)]
    dist.all_gather(parts, padded, group=group)
    return [unseal(session_key(), p.numpy()[:n], what) for p, n in zip(parts, sizes, strict=True)]


def gather_msgs(obj, type_, what: str) -> list:
    """Every rank's ``obj`` (a ``type_``) in rank order, on every rank of this engine."""
    g = tp().attn
    if g.size == 1:
        return [obj]
    parts = _all_gather_bytes(msgspec.msgpack.encode(obj), g.size, g.cpu_group, what)
    return [decode(p, type_, what) for p in parts]


def leaders_gather_msgs(obj, type_, what: str) -> list:
    """Every DP leader's ``obj`` (a ``type_``), in DP rank order (DP leaders only)."""
    info = tp()
    if info.dp_size == 1:
        return [obj]
    parts = _all_gather_bytes(msgspec.msgpack.encode(obj), info.dp_size, info.leaders_group, what)
    return [decode(p, type_, what) for p in parts]
