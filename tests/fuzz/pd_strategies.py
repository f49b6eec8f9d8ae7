"""Hypothesis strategies for PD control messages: raw msgpack, typed structs, peers."""

from __future__ import annotations

import math

import msgspec
from hypothesis import strategies as st

from pdcore.disaggregation import protocol as p
from pdcore.disaggregation.protocol import (
    Abort,
    Ack,
    AuxLayout,
    ChunkDone,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    KVLayout,
    RankEndpoint,
    RoomFailed,
    TransferRequest,
    compat_fields,
    compat_hash,
)

U64 = 2**64 - 1
# Anything msgpack can carry as an integer.
ints = st.one_of(
    st.integers(-(2**63), U64),
    st.sampled_from([0, -1, 1, 2, 31, 32, 33, 255, 256, 2**31, 2**63 - 1, 2**63, U64]),
)
small_text = st.text(max_size=12)
numbers = st.one_of(
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, small_text, st.binary(max_size=12))
msgpack_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)
    ),
    max_leaves=12,
)

MESSAGE_TYPES = [
    p.Handshake,
    p.HandshakeReply,
    TransferRequest,
    ChunkDone,
    RoomFailed,
    Abort,
    Heartbeat,
    HeartbeatReply,
    Ack,
    ErrorReply,
]
TAGS = [t.__name__ for t in MESSAGE_TYPES]
FIELDS = sorted({f for t in MESSAGE_TYPES for f in t.__struct_fields__})
# {"type": <a message tag or not>, <real or random field names>: <any value>}
tagged_maps = st.builds(
    lambda tag, fields: {"type": tag, **fields},
    st.one_of(st.sampled_from(TAGS), small_text, ints),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), small_text), msgpack_values, max_size=6),
)


def pages(num_pages: int):
    """Page ids around the valid range [1, num_pages) and far outside it."""
    return st.one_of(st.integers(-3, num_pages + 3), ints)


def transfer_requests(peer_ids, num_pages: int, num_slots: int):
    return st.builds(
        TransferRequest,
        room=ints,
        dst_pages=st.lists(pages(num_pages), max_size=10),
        aux_slot=st.one_of(st.integers(-2, num_slots + 2), ints),
        decode_peer_id=st.one_of(st.sampled_from(peer_ids), small_text),
    )


def aborts(peer_ids):
    return st.builds(
        Abort,
        room=ints,
        reason=small_text,
        sender_id=st.one_of(st.sampled_from(peer_ids), small_text),
    )


def chunk_dones(rooms, num_pages: int, row_bytes: int):
    return st.builds(
        ChunkDone,
        room=st.one_of(st.sampled_from(rooms), ints),
        chunk=st.one_of(st.integers(-2, num_pages + 2), ints),
        is_last=st.booleans(),
        num_pages=st.one_of(st.integers(-2, num_pages + 2), ints),
        aux_row=st.one_of(st.just(b""), st.binary(max_size=row_bytes + 8)),
    )


region_fields = {
    "addr": numbers,
    "length": numbers,
    "kind": st.one_of(st.sampled_from(["DRAM", "VRAM", "NPU"]), msgpack_values),
    "device_id": numbers,
}
# Mostly all four fields (so each value gets parsed), sometimes some missing.
regions = st.one_of(
    st.fixed_dictionaries(region_fields), st.fixed_dictionaries({}, optional=region_fields)
)
transfer_metadata = st.one_of(
    st.dictionaries(small_text, msgpack_values, max_size=3),
    st.fixed_dictionaries(
        {
            "engine": st.one_of(st.just("mooncake"), msgpack_values),
            "agent": st.one_of(
                st.fixed_dictionaries(
                    {"session": msgpack_values, "protocol": st.sampled_from(["tcp", "rdma"])}
                ),
                msgpack_values,
            ),
            "regions": st.one_of(st.lists(regions, min_size=1, max_size=3), msgpack_values),
        }
    ),
)
rank_endpoints = st.builds(
    RankEndpoint, ints, ints, ints, transfer_metadata, st.lists(ints, max_size=5), ints
)
INFO_FIELDS = {
    "role": small_text,
    "tp_rank": ints,
    "tp_size": ints,
    "page_size": ints,
    "kv_dtype": small_text,
    "layout": st.builds(KVLayout, st.booleans(), ints, ints, ints),
    "model": small_text,
    "transfer_backend": small_text,
    "transfer_metadata": transfer_metadata,
    "kv_buffers": st.lists(ints, max_size=6),
    "page_bytes": ints,
    "num_pages": ints,
    "aux": st.builds(AuxLayout, ints, ints, ints, ints),
    "compat_hash": small_text,
    "notify_addr": small_text,
    "protocol_version": ints,
    "kv_heads_first": ints,
    "kv_heads_count": ints,
    "ranks": st.lists(rank_endpoints, max_size=2),
}


@st.composite
def peers(draw, base: p.EndpointInfo, instance_id: str) -> p.EndpointInfo:
    """``base`` with some fields replaced; often re-hashed so compat checks pass and
    the handshake reaches the transfer engine's ``connect``."""
    names = draw(st.sets(st.sampled_from(sorted(INFO_FIELDS)), min_size=1, max_size=4))
    changes = {name: draw(INFO_FIELDS[name]) for name in names}
    info = msgspec.structs.replace(base, instance_id=instance_id, **changes)
    if "compat_hash" not in names and draw(st.booleans()):
        info = msgspec.structs.replace(info, compat_hash=compat_hash(compat_fields(info)))
    return info
