"""A spawned prefill started with ``--disaggregation-secret``, this process playing decode.

Spec: with the same secret a room's KV moves as without one (Mooncake's notices
over the control plane, NIXL's in band, both sealed); a decode with another or
no secret fails its room with a message naming the flag; a forged or
out-of-range ``TransferRequest`` gets an error reply and prefill registers
nothing for it; decode acts on no unsealed notice and fails a room whose
notices report more pages than it gave or carry a malformed aux row.
"""

from __future__ import annotations

import logging
import random

import pytest
from disaggregation.pd_peer import ENV, MODEL, SHAPE, PrefillProcess, make_pool, wait_state

from pdcore.disaggregation.auth import to_key
from pdcore.disaggregation.control import request
from pdcore.disaggregation.kv_args import KVArgs, KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import Ack, ChunkDone, ErrorReply, TransferRequest
from pdcore.envs import DisaggregationEnv

pytestmark = pytest.mark.timeout(120)

SECRET = "pd-secret-for-tests"
CHUNKS = [[3, 4], [5, 6, 7]]
AUX = dict(token_id=42, logprob=-0.5, top_ids=[42], top_logprobs=[-0.5])


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def prefill(request):
    proc = PrefillProcess(request.param, secret=SECRET)
    proc.backend = request.param
    yield proc
    proc.close()


def decode_manager(backend: str, secret):
    pool = make_pool(SHAPE)
    args = KVArgs.from_pool(pool, MODEL)
    return KVManager("decode", args, backend, env=DisaggregationEnv(**ENV), secret=secret)


def new_room() -> int:
    return random.getrandbits(63) or 1


def test_same_secret_moves_kv_end_to_end(prefill, caplog):
    caplog.set_level(logging.DEBUG, "pdcore")
    mgr = decode_manager(prefill.backend, SECRET)
    try:
        room = new_room()
        recv = mgr.receiver(room, prefill.addr)
        state = wait_state(recv, 10, (KVPoll.WAITING_FOR_INPUT, KVPoll.FAILED))
        assert state is KVPoll.WAITING_FOR_INPUT, recv.failure_reason
        recv.send_request(random.sample(range(1, 32), 5), 3)
        result = prefill.call("send", room, CHUNKS, AUX, False, 5)
        assert result["state"] == "SUCCESS", result["reason"]
        assert wait_state(recv, 10) is KVPoll.SUCCESS, recv.failure_reason
        assert recv.aux().token_id == 42
        if mgr.in_band_notices:
            assert mgr.stats()["notices_in_band"] >= 2, "sealed in-band notices were dropped"
    finally:
        mgr.close()
    assert SECRET not in caplog.text, "the secret was logged"


@pytest.mark.parametrize("secret", [None, "some-other-secret"])
def test_different_secret_fails_the_room_naming_the_flag(prefill, secret):
    mgr = decode_manager(prefill.backend, secret)
    try:
        recv = mgr.receiver(new_room(), prefill.addr)
        assert wait_state(recv, 10) is KVPoll.FAILED
        reason = recv.failure_reason
        assert "not authenticated" in reason and "--disaggregation-secret" in reason, reason
    finally:
        mgr.close()
    assert prefill.call("stats")["pending_requests"] == 0


def test_forged_or_out_of_range_transfer_request_registers_nothing(prefill):
    mgr = decode_manager(prefill.backend, SECRET)  # a real, handshaken decode peer
    try:
        mgr.client.handshake(prefill.addr)
        room = new_room()
        forged = TransferRequest(room, [1, 2], 0, mgr.instance_id)
        reply = request(prefill.addr, forged, 5)  # no MAC
        assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
        key = to_key(SECRET)
        for pages, slot in (([1, 10_000], 0), ([0], 0), ([1, 2], 10_000), ([1], -1)):
            bad = TransferRequest(room, pages, slot, mgr.instance_id)
            reply = request(prefill.addr, bad, 5, key)
            assert isinstance(reply, ErrorReply) and reply.code == "bad_request", (pages, slot)
        assert prefill.call("stats")["pending_requests"] == 0, "prefill registered a bad request"
        good = TransferRequest(room, [1, 2], 0, mgr.instance_id)
        assert request(prefill.addr, good, 5, key) == Ack()
        assert prefill.call("stats")["pending_requests"] == 1
    finally:
        mgr.close()


def test_decode_notices_are_authenticated_and_bounds_checked(prefill):
    mgr = decode_manager(prefill.backend, SECRET)
    key = to_key(SECRET)
    try:
        receivers = []
        for slot in range(3):
            recv = mgr.receiver(new_room(), prefill.addr)
            state = wait_state(recv, 10, (KVPoll.WAITING_FOR_INPUT, KVPoll.FAILED))
            assert state is KVPoll.WAITING_FOR_INPUT, recv.failure_reason
            recv.send_request([1 + 2 * slot, 2 + 2 * slot], slot)
            receivers.append(recv)
        forged, too_many, bad_aux = receivers
        notices = mgr.info.notify_addr
        reply = request(notices, ChunkDone(forged.room, 0, True, 2), 5)  # no MAC
        assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated", reply
        assert forged.poll() is KVPoll.TRANSFERRING, "an unsealed notice was acted on"
        assert request(notices, ChunkDone(too_many.room, 0, False, 3), 5, key) == Ack()
        assert too_many.poll() is KVPoll.FAILED
        assert "chunk 0 with 3 pages, decode gave 2 pages" in too_many.failure_reason
        assert request(notices, ChunkDone(bad_aux.room, 0, True, 2, b"x"), 5, key) == Ack()
        assert bad_aux.poll() is KVPoll.FAILED
        assert "bad aux row" in bad_aux.failure_reason, bad_aux.failure_reason
    finally:
        mgr.close()
