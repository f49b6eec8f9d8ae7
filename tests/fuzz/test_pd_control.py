"""Hostile PD control messages against a real bootstrap server, prefill and decode
KV managers in this process (Mooncake over TCP, no secret).

Spec: whatever reaches prefill's bootstrap server or decode's notice endpoint
(random bytes, msgpack of the wrong shape, truncated messages, typed messages
with rooms, page ids and aux slots out of range, handshakes describing a
malformed peer), the answer comes at once and is an ``ErrorReply`` (HTTP 200
from a handler that refused, 400 for an undecodable body) or the reply a valid
message gets; no handler raises; valid requests are still served afterwards;
and once the fuzzed rooms expire no room, pending request or aux slot is held.
"""

from __future__ import annotations

import itertools
import math
import time

import msgspec
import pytest
from fuzz.pd_sides import PDSides, post, send_raw
from fuzz.pd_strategies import (
    aborts,
    chunk_dones,
    msgpack_values,
    peers,
    rank_endpoints,
    tagged_maps,
    transfer_metadata,
    transfer_requests,
)
from fuzz.profile import CONTROL_EXAMPLES, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from pdcore.disaggregation import control
from pdcore.disaggregation.aux import AuxBuffer, AuxData
from pdcore.disaggregation.control import MAX_BODY, PATH
from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.disaggregation.protocol import (
    Abort,
    Ack,
    ChunkDone,
    ErrorReply,
    Handshake,
    HandshakeError,
    HandshakeReply,
    Heartbeat,
    HeartbeatReply,
    RoomFailed,
    TransferRequest,
    check_compat,
    encode,
)

ids = itertools.count()
rooms = itertools.count(1 << 40)


@pytest.fixture(scope="module")
def sides():
    s = PDSides()
    yield s
    s.close()


def room_id() -> int:
    """A fresh room (Hypothesis reseeds ``random`` per example, so not from there)."""
    return next(rooms)


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def live_receiver(sides, pages=(1, 2, 3, 4)):
    room = room_id()
    recv = sides.decode.receiver(room, sides.addr)
    assert wait(lambda: recv.poll() is not KVPoll.BOOTSTRAPPING)
    recv.send_request(list(pages), 5)
    return room, recv


def assert_error(status: int, reply, code: str | None = None) -> None:
    assert isinstance(reply, ErrorReply), (status, reply)
    assert status in (200, 400), status
    if code is not None:
        assert reply.code == code, reply


# ---- undecodable bodies ---------------------------------------------------------


@fuzz_settings(CONTROL_EXAMPLES)
@given(body=st.binary(min_size=1, max_size=256), endpoint=st.sampled_from(["bootstrap", "notice"]))
def test_random_bytes_are_a_400(sides, cases, body, endpoint):
    cases()
    addr = sides.addr if endpoint == "bootstrap" else sides.notice_addr
    status, reply = post(addr, body)
    if body[:4] == b"PDA1":  # the envelope's magic: refused as a seal this side cannot open
        assert status == 401 and reply.code == "unauthenticated"
        return
    try:
        msgspec.msgpack.decode(body, type=control.Message)
    except msgspec.DecodeError:
        assert status == 400
        assert_error(status, reply, "bad_request")


@fuzz_settings(CONTROL_EXAMPLES)
@given(
    value=st.one_of(tagged_maps, msgpack_values), endpoint=st.sampled_from(["bootstrap", "notice"])
)
def test_msgpack_of_the_wrong_shape_is_refused(sides, cases, value, endpoint):
    """A tag with missing, extra-typed or unknown fields, or no message at all."""
    cases()
    addr = sides.addr if endpoint == "bootstrap" else sides.notice_addr
    body = msgspec.msgpack.encode(value)
    status, reply = post(addr, body)
    try:
        msg = msgspec.msgpack.decode(body, type=control.Message)
    except msgspec.DecodeError:
        assert status == 400
        assert_error(status, reply, "bad_request")
        return
    assert status == 200  # it is a message after all (e.g. {"type": "Heartbeat"})
    if isinstance(msg, Heartbeat):
        assert isinstance(reply, HeartbeatReply)
    elif endpoint == "notice" and isinstance(msg, ChunkDone | RoomFailed | Abort):
        assert isinstance(reply, Ack)
    else:
        assert isinstance(reply, ErrorReply | Ack), reply


@fuzz_settings(CONTROL_EXAMPLES)
@given(data=st.data())
def test_truncated_messages_are_a_400(sides, cases, data):
    cases()
    info = sides.decode.info
    msg = data.draw(
        st.sampled_from(
            [
                Handshake(info),
                TransferRequest(7, list(range(1, 20)), 3, sides.decode_id),
                ChunkDone(7, 0, True, 3, b"x" * 40),
                Abort(7, "why", sides.decode_id),
                Heartbeat("someone"),
            ]
        )
    )
    body = encode(msg)
    cut = data.draw(st.integers(1, len(body) - 1))
    status, reply = post(data.draw(st.sampled_from([sides.addr, sides.notice_addr])), body[:cut])
    assert status == 400
    assert_error(status, reply, "bad_request")


# ---- typed messages with hostile values -----------------------------------------


def expected_bootstrap_reply(sides, msg, status, reply) -> None:
    assert status == 200
    if isinstance(msg, Heartbeat):
        assert reply == HeartbeatReply(sides.bootstrap.server_id)
        return
    if not isinstance(msg, TransferRequest | Abort):
        assert_error(status, reply, "bad_request")
        return
    peer = msg.decode_peer_id if isinstance(msg, TransferRequest) else msg.sender_id
    if peer != sides.decode_id:
        assert_error(status, reply, "unknown_peer")
    elif isinstance(msg, Abort):
        assert reply == Ack()
    elif (
        msg.room <= 0
        or not 0 <= msg.aux_slot < sides.decode.info.aux.num_slots
        or any(not 0 < p < sides.decode.info.num_pages for p in msg.dst_pages)
    ):
        assert_error(status, reply, "bad_request")
        assert "out of range" in reply.message
    else:  # a valid request for a room prefill has not seen (or one decode aborted)
        assert reply == Ack() or "aborted" in reply.message, reply


@fuzz_settings(CONTROL_EXAMPLES)
@given(data=st.data())
def test_room_messages_to_the_bootstrap_server(sides, cases, data):
    """Rooms, page ids and aux slots out of range; unknown peers; messages only
    decode takes (notices) or only a server sends (replies)."""
    cases()
    known, info = [sides.decode_id], sides.decode.info
    msg = data.draw(
        st.one_of(
            transfer_requests(known, info.num_pages, info.aux.num_slots),
            aborts(known),
            chunk_dones([7], info.num_pages, 40),
            st.builds(RoomFailed, st.integers(0, 9), st.text(max_size=5)),
            st.builds(Heartbeat, st.text(max_size=5)),
            st.sampled_from([Ack(), ErrorReply("x"), HeartbeatReply("y")]),
        )
    )
    status, reply = post(sides.addr, encode(msg))
    expected_bootstrap_reply(sides, msg, status, reply)
    assert not sides.errors.records, sides.errors.records[0].exc_info


@fuzz_settings(CONTROL_EXAMPLES)
@given(data=st.data())
def test_handshakes_describing_a_malformed_peer(sides, cases, data):
    """A peer whose layout, metadata (regions with inf addresses, unknown engines),
    TP ranks or aux layout is wrong: refused with an ``ErrorReply``, or accepted only
    when it is compatible with this prefill."""
    cases()
    info = data.draw(peers(sides.decode.info, f"fuzz-peer-{next(ids)}"))
    status, reply = post(sides.addr, encode(Handshake(info)))
    assert status == 200 and not sides.errors.records, sides.errors.records[0].exc_info
    if isinstance(reply, HandshakeReply):
        check_compat(sides.prefill.info, info)  # raises if an incompatible peer got in
    else:
        assert_error(status, reply)
        assert reply.code in ("mismatch", "error") and reply.message
        if reply.code == "error":
            assert reply.message.startswith("prefill cannot connect"), reply.message
        else:
            with pytest.raises(HandshakeError):
                check_compat(sides.prefill.info, info)
                raise HandshakeError(reply.message)  # a TP rank or pool refused


@fuzz_settings(CONTROL_EXAMPLES)
@given(metadata=transfer_metadata, ranks=st.lists(rank_endpoints, max_size=2))
def test_compatible_handshakes_with_hostile_transfer_metadata(sides, cases, metadata, ranks):
    """A peer compatible in every checked field whose engine metadata (regions at
    infinity, unknown engines, agents of any shape) or extra TP ranks are junk:
    the transfer engine's ``connect`` refuses it with an ``ErrorReply``."""
    cases()
    info = msgspec.structs.replace(
        sides.decode.info,
        instance_id=f"fuzz-peer-{next(ids)}",
        transfer_metadata=metadata,
        ranks=ranks,
    )
    status, reply = post(sides.addr, encode(Handshake(info)))
    assert status == 200 and not sides.errors.records, sides.errors.records[0].exc_info
    assert isinstance(reply, HandshakeReply | ErrorReply), reply
    if isinstance(reply, ErrorReply):
        assert reply.code in ("mismatch", "error"), reply


def test_a_peer_region_at_infinity_is_a_clean_refusal(sides):
    """``int(inf)`` raised OverflowError out of the region parser: a handler error."""
    metadata = dict(sides.decode.info.transfer_metadata)
    region = {"addr": math.inf, "length": 1, "kind": "DRAM", "device_id": 0}
    info = msgspec.structs.replace(
        sides.decode.info,
        instance_id="fuzz-inf",
        transfer_metadata={**metadata, "regions": [region]},
    )
    status, reply = post(sides.addr, encode(Handshake(info)))
    assert status == 200 and reply.code == "error", reply
    assert "malformed memory region" in reply.message
    assert not sides.errors.records


def aux_row_for(room: int, row_bytes: int) -> bytes:
    scratch = AuxBuffer(1)
    scratch.write(0, room, AuxData(token_id=3))
    raw = scratch.rows[0].tobytes()
    assert len(raw) == row_bytes
    return raw


@fuzz_settings(CONTROL_EXAMPLES)
@given(data=st.data())
def test_notices_to_decode_never_wedge_a_room(sides, cases, data):
    """Chunk notices with chunk numbers and page counts out of range, aux rows of
    the wrong size or room, for a live room and for unknown ones: each is answered
    at once, the live room ends FAILED (or SUCCESS only with its own aux row), and
    once aborted it is gone."""
    cases()
    row_bytes = sides.decode.aux.row_bytes
    live, good_row = -7, b"good row"  # stand-ins, replaced once the room exists
    notices = data.draw(
        st.lists(
            st.one_of(
                chunk_dones([live], 4, row_bytes),
                st.builds(
                    ChunkDone,
                    st.just(live),
                    st.integers(0, 4),
                    st.booleans(),
                    st.integers(0, 4),
                    st.just(good_row),
                ),
                st.builds(RoomFailed, st.sampled_from([live, 12345]), st.text(max_size=5)),
                st.builds(
                    Abort, st.sampled_from([live, 12345]), st.text(max_size=5), st.text(max_size=5)
                ),
                st.builds(Heartbeat, st.text(max_size=5)),
                st.sampled_from([Ack(), TransferRequest(live, [1], 1, "x")]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    # The room only now: Hypothesis may end an example in the middle of a draw.
    room, recv = live_receiver(sides)
    for i, msg in enumerate(notices):
        if getattr(msg, "room", None) == live:
            msg = msgspec.structs.replace(msg, room=room)
        if getattr(msg, "aux_row", None) == good_row:
            msg = msgspec.structs.replace(msg, aux_row=aux_row_for(room, row_bytes))
        notices[i] = msg
    for msg in notices:
        status, reply = post(sides.notice_addr, encode(msg))
        assert status == 200
        if isinstance(msg, Heartbeat):
            assert reply == HeartbeatReply(sides.decode_id)
        elif isinstance(msg, ChunkDone | RoomFailed | Abort):
            assert isinstance(reply, Ack), reply
        else:
            assert_error(status, reply, "bad_request")
    state = recv.poll()
    assert state in (KVPoll.TRANSFERRING, KVPoll.FAILED, KVPoll.SUCCESS), state
    if state is KVPoll.SUCCESS:
        assert sides.decode.aux.room(recv.aux_slot) == room
    recv.abort("fuzz case over")
    assert wait(lambda: recv.poll() in FINAL), recv
    assert not sides.errors.records, sides.errors.records[0].exc_info


# ---- sizes and the HTTP layer ---------------------------------------------------


def test_a_chunk_number_past_the_pages_fails_the_room_at_once(sides):
    """Chunk 10**12 (is_last) once made decode build a set of 10**12 ints under its
    lock: the whole process froze. Negative page counts hid an overrun."""
    # 10**7, not 10**12: without the fix this costs 0.5 GB and a second, not the machine.
    for bad in (ChunkDone(0, 10**7, True, 1), ChunkDone(0, 0, False, -100)):
        room, recv = live_receiver(sides)
        start = time.monotonic()
        status, reply = post(sides.notice_addr, encode(msgspec.structs.replace(bad, room=room)))
        assert status == 200 and reply == Ack() and time.monotonic() - start < 2
        assert recv.poll() is KVPoll.FAILED and "impossible notice" in recv.failure_reason


def test_huge_page_lists_are_taken_or_refused_by_size(sides, cases):
    cases(2)
    pages = [1 + i % 31 for i in range(2_000_000)]  # ~2 MB of msgpack
    status, reply = post(sides.addr, encode(TransferRequest(room_id(), pages, 0, sides.decode_id)))
    assert status == 200 and reply == Ack()
    over = encode(TransferRequest(room_id(), [1] * (MAX_BODY + 1), 0, sides.decode_id))
    head = POST + f"Content-Length: {len(over)}\r\n\r\n"  # refused before the body is read
    answer = send_raw(sides.addr, head.encode() + over[:65536])
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"bad Content-Length" in answer


POST = f"POST {PATH} HTTP/1.1\r\n"
RAW = {
    # name: (request bytes, expected status)
    "no-content-length": (POST + "Host: x\r\n\r\n", 400),
    "bad-content-length": (POST + "Content-Length: abc\r\n\r\n", 400),
    "negative-content-length": (POST + "Content-Length: -5\r\n\r\n", 400),
    "oversized-content-length": (POST + f"Content-Length: {MAX_BODY + 1}\r\n\r\n", 400),
    "chunked": (POST + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    "short-body": (POST + "Content-Length: 100\r\n\r\n\x81\xa4type", 400),
    "wrong-path": ("POST /elsewhere HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 404),
    "get-health": ("GET /health HTTP/1.1\r\n\r\n", 200),
    "get-message-path": (f"GET {PATH} HTTP/1.1\r\n\r\n", 404),
    "garbage-request-line": ("\x00\x01 GARBAGE\r\n\r\n", 400),
    "http-0.9": (f"POST {PATH}\r\n\r\n", 400),
    "huge-header": (POST + f"X: {'a' * 70000}\r\n\r\n", 431),
    "unsupported-method": (f"PUT {PATH} HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
}


@pytest.mark.parametrize("name", list(RAW))
@pytest.mark.parametrize("endpoint", ["bootstrap", "notice"])
def test_malformed_http_gets_a_status_line(sides, cases, name, endpoint):
    """Hand-made raw requests: each gets a status line and the connection ends.
    (An unknown method is a 501, as RFC 9110 wants.)"""
    cases()
    raw, expected = RAW[name]
    answer = send_raw(
        sides.addr if endpoint == "bootstrap" else sides.notice_addr, raw.encode("latin-1")
    )
    if answer.startswith(b"HTTP/"):
        status = int(answer.split(b" ", 2)[1])
    else:  # an unparsable request line gets http.server's HTTP/0.9 answer: the page alone
        status = int(answer.split(b"Error code: ", 1)[1][:3])
    assert status == expected, answer[:300]


def test_a_peer_that_stops_mid_body_is_dropped_and_others_served(sides, monkeypatch):
    """A body shorter than its Content-Length on a connection left open: the server
    drops it after its read timeout instead of holding a thread forever."""
    import socket

    monkeypatch.setattr(sides.bootstrap._control._server, "read_timeout", 0.5)
    host, port = sides.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as stuck:
        stuck.sendall(f"POST {PATH} HTTP/1.1\r\nContent-Length: 100\r\n\r\n\x81".encode())
        assert post(sides.addr, encode(Heartbeat("x")))[1] == HeartbeatReply(
            sides.bootstrap.server_id
        )
        start = time.monotonic()
        assert stuck.recv(100) == b"", "the server answered a request it never got whole"
        assert time.monotonic() - start < 5


def test_valid_traffic_still_flows_and_nothing_is_left_behind(sides):
    """After all of the above: a real transfer succeeds end to end, then (once the
    fuzzed pending requests expire) no room, pending request or aux slot is held."""
    room, recv = live_receiver(sides, pages=(7, 8, 9))
    sender = sides.prefill.sender(room)
    assert wait(lambda: sender.poll() is KVPoll.READY), sender
    sender.send_chunk([3, 4], is_last=False)
    sender.send_chunk([5], is_last=True, aux=AuxData(token_id=42))
    assert wait(lambda: sender.poll() in FINAL and recv.poll() in FINAL)
    assert (sender.poll(), recv.poll()) == (KVPoll.SUCCESS, KVPoll.SUCCESS), recv.failure_reason
    assert recv.aux().token_id == 42
    expiry = sides.prefill.env.bootstrap_timeout + 1.0
    stats = sides.prefill.stats
    assert wait(lambda: stats()["pending_requests"] == 0 and not sides.prefill._aborted, expiry)
    assert stats()["active_rooms"] == 0 and sides.decode.active_rooms == 0
    assert sides.prefill.aux.num_free() == sides.prefill.aux.num_slots
    assert not sides.errors.records
