"""Forged, tampered, stale and replayed envelopes with ``--disaggregation-secret``.

Spec: with a secret on both sides, a control message that is not sealed with it
exactly as sent (any byte changed, cut short, another key, a timestamp over 60 s
off, a nonce seen before, no seal at all) gets HTTP 401 with an unsealed
``ErrorReply(code="unauthenticated")`` and reaches no handler, at prefill's
bootstrap server and at decode's notice endpoint alike; sealed traffic still flows.
"""

from __future__ import annotations

import http.client
import itertools
import os
import time

import pytest
from fuzz.pd_sides import PDSides, count_handled, post
from fuzz.profile import CONTROL_EXAMPLES, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from pdcore.disaggregation.auth import HEADER_BYTES, MAGIC, is_sealed, seal, to_key
from pdcore.disaggregation.control import PATH
from pdcore.disaggregation.protocol import (
    Abort,
    ChunkDone,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    TransferRequest,
    encode,
)

SECRET = "fuzz-secret-7f3a"
rooms = itertools.count(1 << 41)


@pytest.fixture(scope="module")
def sides():
    s = PDSides(SECRET)
    s.handled = {
        "bootstrap": count_handled(s.bootstrap._control),
        "notice": count_handled(s.decode._notices),
    }
    yield s
    s.close()


def message(sides, endpoint: str):
    room = next(rooms)
    if endpoint == "bootstrap":
        return TransferRequest(room, [1, 2], 3, sides.decode_id)
    return ChunkDone(room, 0, True, 1)


MUTATIONS = [
    "flip",
    "truncate",
    "random-mac",
    "other-key",
    "stale",
    "future",
    "plain",
    "magic+junk",
]


@fuzz_settings(CONTROL_EXAMPLES)
@given(
    endpoint=st.sampled_from(["bootstrap", "notice"]),
    mutation=st.sampled_from(MUTATIONS),
    data=st.data(),
)
def test_a_message_not_sealed_as_sent_is_a_401_and_reaches_no_handler(
    sides, cases, endpoint, mutation, data
):
    cases()
    payload = encode(message(sides, endpoint))
    body = seal(sides.key, payload)
    if mutation == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1 :]
    elif mutation == "truncate":
        body = body[: data.draw(st.integers(1, len(body) - 1))]
    elif mutation == "random-mac":
        mac = data.draw(st.binary(min_size=32, max_size=32))
        body = body[: HEADER_BYTES - 32] + mac + payload
    elif mutation == "other-key":
        other = data.draw(st.binary(min_size=1, max_size=40).filter(lambda k: k != sides.key))
        body = seal(to_key(other), payload)
    elif mutation in ("stale", "future"):
        skew = data.draw(st.floats(61, 10**6))
        body = seal(sides.key, payload, now=time.time() + (skew if mutation == "future" else -skew))
    elif mutation == "plain":
        body = payload
    else:
        body = MAGIC + data.draw(st.binary(max_size=200))
    addr = sides.addr if endpoint == "bootstrap" else sides.notice_addr
    before = len(sides.handled[endpoint])
    status, reply = post(addr, body, sides.key)
    assert status == 401, (status, reply)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
    assert len(sides.handled[endpoint]) == before, "an unauthenticated message was handled"


@pytest.mark.parametrize("endpoint", ["bootstrap", "notice"])
def test_a_replayed_envelope_is_refused_the_second_time(sides, endpoint):
    addr = sides.addr if endpoint == "bootstrap" else sides.notice_addr
    body = seal(sides.key, encode(Heartbeat("replayer")))
    first, _ = post(addr, body, sides.key)
    again, reply = post(addr, body, sides.key)
    assert first == 200 and again == 401 and "replayed" in reply.message


@pytest.mark.parametrize("endpoint", ["bootstrap", "notice"])
def test_sealed_traffic_still_flows_after_the_forgeries(sides, endpoint):
    addr = sides.addr if endpoint == "bootstrap" else sides.notice_addr
    status, reply = post(addr, seal(sides.key, encode(Heartbeat("me"))), sides.key)
    server_id = sides.bootstrap.server_id if endpoint == "bootstrap" else sides.decode_id
    assert status == 200 and reply == HeartbeatReply(server_id)
    abort = Abort(next(rooms), "done", sides.decode_id)
    if endpoint == "bootstrap":  # a room message from the handshaken peer is handled
        before = len(sides.handled["bootstrap"])
        status, _ = post(addr, seal(sides.key, encode(abort)), sides.key)
        assert status == 200 and len(sides.handled["bootstrap"]) == before + 1


def test_replies_to_forgeries_are_not_sealed(sides):
    """A side that could not verify the sender must not hand it a valid MAC of
    anything (a reply is sealed only for an authenticated request)."""
    host, port = sides.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", PATH, MAGIC + os.urandom(100))
        data = conn.getresponse().read()
    finally:
        conn.close()
    assert not is_sealed(data)
