"""Conditional disaggregation on the control plane: decode serves a room itself and
tells prefill to drop it (``Abort(served_by_decode=True)``), whichever side's
message comes first, and even while prefill is already writing that room."""

from __future__ import annotations

import random
import time

import pytest
from disaggregation.pd_peer import ENV, MODEL, SHAPE, make_pool, wait_state

from pdcore.disaggregation.bootstrap import BootstrapServer
from pdcore.disaggregation.kv_args import FINAL, KVArgs, KVPoll
from pdcore.disaggregation.kv_manager import KVManager
from pdcore.disaggregation.protocol import SERVED_BY_DECODE, Abort
from pdcore.envs import DisaggregationEnv
from pdcore.errors import PdcoreError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sides():
    """A prefill (bootstrap server + KV manager) and a decode KV manager, in process."""
    env = DisaggregationEnv(**ENV)
    bootstrap = BootstrapServer("127.0.0.1", 0)
    prefill_pool, decode_pool = make_pool(SHAPE), make_pool(SHAPE)
    prefill = KVManager(
        "prefill", KVArgs.from_pool(prefill_pool, MODEL), "mooncake", env=env, bootstrap=bootstrap
    )
    decode = KVManager("decode", KVArgs.from_pool(decode_pool, MODEL), "mooncake", env=env)
    yield prefill, decode, f"127.0.0.1:{bootstrap.port}"
    decode.close()
    prefill.close()
    bootstrap.close()


def new_room() -> int:
    return random.getrandbits(63) or 1


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_served_and_freed(prefill: KVManager, sender) -> None:
    assert wait_state(sender, 10) is KVPoll.FAILED
    assert sender.served_by_decode and sender.failure_reason == SERVED_BY_DECODE
    assert sender.inflight == 0
    stats = prefill.stats()
    assert stats["active_rooms"] == 0 and stats["pending_requests"] == 0, stats


def test_drop_before_prefill_opens_the_room(sides):
    prefill, decode, addr = sides
    room = new_room()
    decode.drop_room(room, addr)
    assert wait_for(lambda: room in prefill._aborted), "prefill never heard of the drop"
    assert_served_and_freed(prefill, prefill.sender(room))


def test_drop_after_prefill_opened_the_room(sides):
    prefill, decode, addr = sides
    room = new_room()
    sender = prefill.sender(room)
    assert sender.poll() is KVPoll.WAITING_FOR_DECODE
    decode.drop_room(room, addr)
    assert_served_and_freed(prefill, sender)


def test_drop_while_prefill_writes_stops_and_frees_the_room(sides):
    """Decode decides before it sends page ids, so this cannot happen today; a room
    already READY with a chunk in flight still ends served once its writes are over."""
    prefill, decode, addr = sides
    room = new_room()
    receiver = decode.receiver(room, addr)
    assert wait_state(receiver, 10, (KVPoll.WAITING_FOR_INPUT,)) is KVPoll.WAITING_FOR_INPUT
    receiver.send_request([1, 2, 3, 4], aux_slot=3)
    sender = prefill.sender(room)
    assert wait_state(sender, 10, (KVPoll.READY, *FINAL)) is KVPoll.READY
    sender.send_chunk([5, 6], is_last=False)
    reply = decode.client.send(addr, Abort(room, "", decode.instance_id, served_by_decode=True))
    assert reply.ok, "prefill answered before its writes into the room ended"
    assert_served_and_freed(prefill, sender)
    receiver.abort("test over")
    assert wait_state(receiver, 10) is KVPoll.FAILED and decode.active_rooms == 0


def test_a_plain_abort_is_still_a_failure(sides):
    prefill, decode, addr = sides
    room = new_room()
    sender = prefill.sender(room)
    decode.client.send(addr, Abort(room, "client left", decode.instance_id))
    assert wait_state(sender, 10) is KVPoll.FAILED
    assert not sender.served_by_decode and "client left" in sender.failure_reason


def test_decode_cannot_drop_a_room_it_is_receiving(sides):
    _, decode, addr = sides
    room = new_room()
    receiver = decode.receiver(room, addr)
    with pytest.raises(PdcoreError, match="already active"):
        decode.drop_room(room, addr)
    receiver.abort("test over")
    assert wait_state(receiver, 10) is KVPoll.FAILED


def test_an_unreachable_prefill_does_not_raise(sides, caplog):
    """The decode request is served anyway; prefill's room fails at its bootstrap timeout."""
    _, decode, _ = sides
    decode.drop_room(new_room(), "127.0.0.1:9")  # discard: nothing listens
    assert wait_for(lambda: "could not tell prefill" in caplog.text)
