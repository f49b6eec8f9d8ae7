"""Single-process checks of the protocol pieces: messages, compat check, transport, aux."""

from __future__ import annotations

import http.client
import time

import msgspec
import pytest
from disaggregation.endpoints import endpoint_info

from pdcore.disaggregation.aux import AuxBuffer, AuxData
from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.control import PATH, ControlError, ControlServer, request
from pdcore.disaggregation.kv_args import KVArgs, KVPoll
from pdcore.disaggregation.protocol import (
    Abort,
    Ack,
    EndpointInfo,
    ErrorReply,
    HandshakeError,
    Heartbeat,
    HeartbeatReply,
    KVLayout,
    TransferRequest,
    check_compat,
    decode,
    encode,
)


def info(**over) -> EndpointInfo:
    return endpoint_info(**over)


def test_messages_round_trip_and_garbage_is_rejected():
    msg = TransferRequest(room=2**63 + 5, dst_pages=[3, 9], aux_slot=1, decode_peer_id="d")
    assert decode(encode(msg)) == msg
    assert decode(encode(Ack())) == Ack()
    with pytest.raises(msgspec.DecodeError):
        decode(b"\x93garbage")
    with pytest.raises(msgspec.DecodeError):
        decode(msgspec.msgpack.encode({"type": "Exec", "code": "import os"}))


def test_compat_hash_covers_exactly_the_fields_that_must_match():
    assert info().compat_hash == info(instance_id="y", kv_buffers=[1, 2, 3, 4]).compat_hash
    assert info().compat_hash != info(page_size=8).compat_hash
    assert info().compat_hash != info(layout=KVLayout(False, 4, 8, 2)).compat_hash
    check_compat(info(role="prefill"), info())


def test_mismatch_names_every_field_with_both_values():
    with pytest.raises(HandshakeError) as e:
        check_compat(info(page_size=4, kv_dtype="float32"), info(page_size=8, kv_dtype="bfloat16"))
    text = str(e.value)
    assert "page_size: prefill=4 decode=8" in text
    assert "kv_dtype: prefill='float32' decode='bfloat16'" in text
    with pytest.raises(HandshakeError, match="num_kv_heads: prefill=2 decode=4"):
        check_compat(info(), info(layout=KVLayout(False, 4, 8, 2)))


def test_control_server_answers_malformed_and_failing_requests():
    def handler(msg):
        if isinstance(msg, Abort):
            raise RuntimeError("handler bug")
        return Ack()

    server = ControlServer("127.0.0.1", 0, handler)
    try:
        assert request(server.address, Heartbeat(), 2) == Ack()
        reply = request(server.address, Abort(1, "x"), 2)
        assert isinstance(reply, ErrorReply) and "handler bug" in reply.message
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        conn.request("POST", PATH, b"\xc1not msgpack")
        resp = conn.getresponse()
        reply = decode(resp.read())
        assert resp.status == 400 and reply.code == "bad_request"
        conn.close()
    finally:
        server.close()
    start = time.monotonic()
    with pytest.raises(ControlError, match="unreachable"):
        request(server.address, Heartbeat(), 2)
    assert time.monotonic() - start < 2


def test_bootstrap_server_heartbeat_and_unknown_peer():
    server = BootstrapServer("127.0.0.1", 0)
    try:
        addr = f"127.0.0.1:{server.port}"
        assert request(addr, Heartbeat("d"), 2) == HeartbeatReply(server.server_id)
        reply = request(addr, TransferRequest(1, [1], 0, "nobody"), 2)
        assert isinstance(reply, ErrorReply) and reply.code == "unknown_peer"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.close()


def test_aux_buffer_rows():
    aux = AuxBuffer(4, top_k=3)
    slot = aux.alloc()
    aux.write(slot, 77, AuxData(5, -0.5, [5, 6, 7, 8], [-0.5, -1.0, -2.0, -3.0]))
    assert aux.room(slot) == 77
    got = aux.read(slot)
    assert (got.token_id, got.top_ids, got.top_logprobs) == (5, [5, 6, 7], [-0.5, -1.0, -2.0])
    aux.clear(slot)
    assert aux.room(slot) == 0
    aux.free(slot)
    with pytest.raises(Exception, match="freed twice"):
        aux.free(slot)
    assert [aux.alloc() for _ in range(5)].count(None) == 1
    with pytest.raises(Exception, match="out of range"):
        aux.row_addr(4)


def test_kvpoll_matches_sglang_numbers_and_aliases():
    assert [int(s) for s in (KVPoll.FAILED, KVPoll.BOOTSTRAPPING, KVPoll.WAITING_FOR_INPUT)] == [
        0,
        1,
        2,
    ]
    assert KVPoll.WAITING_FOR_DECODE is KVPoll.BOOTSTRAPPING
    assert KVPoll.READY is KVPoll.WAITING_FOR_INPUT
    assert (int(KVPoll.TRANSFERRING), int(KVPoll.SUCCESS)) == (3, 4)


def test_kv_args_rejects_ragged_buffers():
    layout = KVLayout(False, 2, 8, 1)
    with pytest.raises(ValueError, match="equal-sized"):
        KVArgs(((4096, 1024), (8192, 512)), 4, 4, "float32", layout, "m")
    assert KVArgs(((4096, 1024), (8192, 1024)), 4, 4, "float32", layout, "m").page_bytes == 256


def test_page_spans_group_pages_consecutive_on_both_sides():
    from pdcore.disaggregation.chunk_writer import page_spans

    assert page_spans([3, 4, 5, 9, 10, 6], [0, 1, 2, 3, 4, 7]) == [(3, 0, 3), (9, 3, 2), (6, 7, 1)]
    assert page_spans([1, 2], [5, 7]) == [(1, 5, 1), (2, 7, 1)], "dst gap splits the span"
    assert page_spans([], []) == []
