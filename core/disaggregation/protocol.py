"""Control-plane messages between a prefill and a decode (msgpack, never pickle).

Decode starts every conversation: it handshakes with prefill's bootstrap server
once per peer, then sends one ``TransferRequest`` per room. Prefill answers the
room's progress with ``ChunkDone`` / ``RoomFailed`` notices to decode's notice
endpoint, because most engines (Mooncake) cannot tell decode that bytes landed.
The handshake carries a ``compat_hash`` so a page-size, dtype or layout mismatch
fails loudly instead of moving bytes that decode would misread as KV.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

from pdcore.errors import PdcoreError

PROTOCOL_VERSION = 1
# A room decode prefilled itself ends with this reason on prefill (not an error).
SERVED_BY_DECODE = "served by decode (local prefill)"


class HandshakeError(PdcoreError):
    """The peers cannot exchange KV: incompatible layout, or the peer refused us."""


class KVLayout(msgspec.Struct, frozen=True):
    """Shape of one page of one layer; with page size and dtype it fixes the bytes."""

    is_mla: bool
    num_kv_heads: int
    head_dim: int
    num_layers: int


class AuxLayout(msgspec.Struct, frozen=True):
    """Where the aux rows live: ``num_slots`` rows of ``row_bytes`` from ``addr``."""

    addr: int
    row_bytes: int
    num_slots: int
    top_k: int


class RankEndpoint(msgspec.Struct, frozen=True):
    """A TP rank other than the leader, as a transfer destination: its share of the
    KV heads (``layout.num_kv_heads`` counts the whole model's), its engine and pages."""

    tp_rank: int
    kv_heads_first: int
    kv_heads_count: int
    transfer_metadata: dict
    kv_buffers: list[int]
    page_bytes: int


class EndpointInfo(msgspec.Struct, frozen=True):
    """One side's identity, KV layout and transfer metadata, sent in the handshake.

    ``kv_buffers``: address of each layer's K then V buffer (MLA: its one latent
    buffer, ``layout.is_mla``); page ``p`` of buffer ``i`` starts at
    ``kv_buffers[i] + p * page_bytes``. ``notify_addr``: decode's
    ``host:port`` for notices (empty on prefill).
    """

    instance_id: str
    role: str
    tp_rank: int
    tp_size: int
    page_size: int
    kv_dtype: str
    layout: KVLayout
    model: str
    transfer_backend: str
    transfer_metadata: dict
    kv_buffers: list[int]
    page_bytes: int
    num_pages: int
    aux: AuxLayout
    compat_hash: str
    notify_addr: str = ""
    engine: str = "pdcore"
    protocol_version: int = PROTOCOL_VERSION
    # Tensor parallelism: the heads this (leader) rank holds; 0 = all of them. The
    # other ranks of a decode instance come in ``ranks`` (each receives its heads).
    kv_heads_first: int = 0
    kv_heads_count: int = 0
    ranks: list[RankEndpoint] = msgspec.field(default_factory=list)


class Handshake(msgspec.Struct, tag=True):
    peer: EndpointInfo


class HandshakeReply(msgspec.Struct, tag=True):
    """``server_id`` changes when the prefill restarts; decode re-handshakes then."""

    peer: EndpointInfo
    server_id: str


class TransferRequest(msgspec.Struct, tag=True):
    """Decode has preallocated ``dst_pages`` and aux row ``aux_slot`` for ``room``."""

    room: int
    dst_pages: list[int]
    aux_slot: int
    decode_peer_id: str


class ChunkDone(msgspec.Struct, tag=True):
    """The pages of chunk ``chunk`` (and the aux row when ``is_last``) have landed.

    ``aux_row``: the packed aux row itself, for engines that cannot write host
    memory (``cuda_ipc``); empty when the engine wrote the row into decode's buffer.
    """

    room: int
    chunk: int
    is_last: bool
    num_pages: int
    aux_row: bytes = b""


class RoomFailed(msgspec.Struct, tag=True):
    room: int
    reason: str


class Abort(msgspec.Struct, tag=True):
    """Either side gives up on a room; the receiver fails it and stops writing.

    ``served_by_decode``: decode prefilled the request itself (its prompt was within
    ``--disaggregation-local-prefill-threshold``), so the room is not a failure:
    prefill frees it and answers its half of the request with a 2xx, not an error.
    """

    room: int
    reason: str
    sender_id: str = ""
    served_by_decode: bool = False


class Heartbeat(msgspec.Struct, tag=True):
    sender_id: str = ""


class HeartbeatReply(msgspec.Struct, tag=True):
    server_id: str


class Ack(msgspec.Struct, tag=True):
    ok: bool = True


class ErrorReply(msgspec.Struct, tag=True):
    """``code``: ``mismatch``, ``unknown_peer``, ``bad_request``, ``unauthenticated``
    (no or a bad MAC, see ``auth.py``) or ``error``."""

    message: str
    code: str = "error"


Message = (
    Handshake
    | HandshakeReply
    | TransferRequest
    | ChunkDone
    | RoomFailed
    | Abort
    | Heartbeat
    | HeartbeatReply
    | Ack
    | ErrorReply
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    """Decode one message; raises ``msgspec.DecodeError`` on anything malformed."""
    return _decoder.decode(data)


def compat_fields(info: EndpointInfo) -> dict:
    """Exactly the fields that must be equal on both sides for pages to mean the same."""
    return {
        "protocol_version": info.protocol_version,
        "page_size": info.page_size,
        "kv_dtype": info.kv_dtype,
        "is_mla": info.layout.is_mla,
        "num_kv_heads": info.layout.num_kv_heads,
        "head_dim": info.layout.head_dim,
        "num_layers": info.layout.num_layers,
        "model": info.model,
        "transfer_backend": info.transfer_backend,
        "aux_top_k": info.aux.top_k,
        "aux_row_bytes": info.aux.row_bytes,
    }


def compat_hash(fields: dict) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_compat(prefill: EndpointInfo, decode: EndpointInfo) -> None:
    """Raise ``HandshakeError`` naming every differing field with both values."""
    p, d = compat_fields(prefill), compat_fields(decode)
    diffs = [f"{k}: prefill={p[k]!r} decode={d[k]!r}" for k in p if p[k] != d.get(k)]
    if not diffs and prefill.compat_hash != decode.compat_hash:
        diffs = [f"compat_hash: prefill={prefill.compat_hash} decode={decode.compat_hash}"]
    if diffs:
        raise HandshakeError(
            "prefill and decode KV caches are incompatible (" + "; ".join(diffs) + "); "
            "start both with the same model, --page-size, --kv-cache-dtype "
            "and --disaggregation-transfer-backend"
        )
    if len(decode.kv_buffers) != len(prefill.kv_buffers):
        raise HandshakeError(
            f"kv buffer count differs: prefill={len(prefill.kv_buffers)} "
            f"decode={len(decode.kv_buffers)}"
        )
