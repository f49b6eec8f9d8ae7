"""Decode keeps the pages of a room whose prefill went silent until that prefill can no
longer write them (RELIABILITY.md, "A live prefill that decode gave up on can still write").

Heartbeats that fail mean "offline" to decode, which fails the prefill's rooms at once
(clients get their error). But a prefill that is only frozen or cut off on the control
plane still holds decode's page ids and may write them when it resumes: reusing those
pages for other requests would corrupt them. So such rooms stay *unsettled*: decode
re-sends their abort (``DecodeKVManager.settled`` probes), and only a confirmation, a
refused connection (the process is gone) or ``quarantine_timeout`` frees them.

A real prefill KV manager + bootstrap server and a decode KV manager in this process
(Mooncake over TCP), decode's control messages through a fault proxy.
"""

from __future__ import annotations

import time

import pytest
from chaos.fault_proxy import Fault, FaultProxy
from disaggregation.pd_peer import wait_state
from fuzz.pd_sides import FUZZ_ENV, PDSides

from pdcore.disaggregation.kv_args import KVPoll

pytestmark = pytest.mark.timeout(60)
ROOM = 777


def open_transferring_room(sides: PDSides, proxy: FaultProxy):
    """A room whose pages prefill holds (its sender READY), as before a transfer."""
    sender = sides.prefill.sender(ROOM)
    receiver = sides.decode.receiver(ROOM, f"127.0.0.1:{proxy.port}")
    assert wait_state(receiver, 10, {KVPoll.WAITING_FOR_INPUT}) is KVPoll.WAITING_FOR_INPUT
    receiver.send_request([1, 2, 3], 0)
    deadline = time.monotonic() + 10
    while sender.poll() is not KVPoll.READY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender.poll() is KVPoll.READY, "prefill never got decode's pages"
    return sender, receiver


def lose_prefill(sides: PDSides, proxy: FaultProxy, receiver) -> None:
    """What decode's heartbeat thread does after missed heartbeats (process alive)."""
    sides.decode.on_peer_lost(f"127.0.0.1:{proxy.port}", "heartbeats failed", True)
    assert receiver.poll() is KVPoll.FAILED
    assert receiver.unsettled, "a room prefill may still write must stay unsettled"


def settled_within(sides: PDSides, timeout: float) -> float | None:
    """Seconds until ``settled(ROOM)``, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if sides.decode.settled(ROOM):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


@pytest.fixture
def pd_through_proxy():
    """``open(env=None) -> (sides, proxy)``: a PD pair whose decode reaches prefill's
    bootstrap server only through a fault proxy; both are closed after the test."""
    opened = []

    def open_pair(env=None):
        sides = PDSides(env=env) if env is not None else PDSides()
        opened.append(sides)
        proxy = FaultProxy(sides.bootstrap.port, "bootstrap")
        opened.append(proxy)
        return sides, proxy

    yield open_pair
    for thing in reversed(opened):
        thing.close()


def test_pages_wait_for_a_silent_prefill_to_confirm_the_abort(pd_through_proxy):
    sides, proxy = pd_through_proxy()
    sender, receiver = open_transferring_room(sides, proxy)
    # Prefill stays silent to the first two aborts (frozen), then answers.
    proxy.arm(*[Fault("blackhole", hold_s=1.0)] * 2, match=b"Abort")
    lose_prefill(sides, proxy, receiver)
    assert not sides.decode.settled(ROOM), "pages released while prefill is silent"
    assert settled_within(sides, 0.8) is None, "settled although no abort got through"
    took = settled_within(sides, 15)
    assert took is not None, "never settled after prefill answered again"
    assert proxy.snapshot()["injected"] == {"blackhole": 2}
    state = sender.poll()
    assert state is KVPoll.FAILED, f"prefill's room is {state.name}: it could still write"
    stats = sides.decode.stats()
    assert stats["rooms_unsettled"] == 0 and stats["rooms_quarantine_expired"] == 0


def test_a_refused_connection_settles_at_once(pd_through_proxy):
    sides, proxy = pd_through_proxy()
    _, receiver = open_transferring_room(sides, proxy)
    proxy.close()  # nothing listens at the address decode knows: the process is gone
    lose_prefill(sides, proxy, receiver)
    took = settled_within(sides, 5)
    assert took is not None, "a refused connection must settle the room"
    assert sides.decode.stats()["rooms_quarantine_expired"] == 0


def test_quarantine_timeout_bounds_the_hold(pd_through_proxy):
    env = FUZZ_ENV.__class__(**{**FUZZ_ENV.__dict__, "quarantine_timeout": 1.5})
    sides, proxy = pd_through_proxy(env)
    _, receiver = open_transferring_room(sides, proxy)
    proxy.arm(*[Fault("blackhole", hold_s=10.0)] * 5, match=b"Abort")  # never answers
    lose_prefill(sides, proxy, receiver)
    took = settled_within(sides, 10)
    assert took is not None and took >= 1.0, f"settled after {took}s, expected ~1.5s"
    stats = sides.decode.stats()
    assert stats["rooms_quarantine_expired"] == 1 and stats["rooms_unsettled"] == 0


def test_a_room_lost_before_prefill_had_pages_is_not_held(pd_through_proxy):
    sides, proxy = pd_through_proxy()
    receiver = sides.decode.receiver(ROOM, f"127.0.0.1:{proxy.port}")
    assert wait_state(receiver, 10, {KVPoll.WAITING_FOR_INPUT}) is KVPoll.WAITING_FOR_INPUT
    sides.decode.on_peer_lost(f"127.0.0.1:{proxy.port}", "heartbeats failed", True)
    assert receiver.poll() is KVPoll.FAILED and not receiver.unsettled
    assert sides.decode.settled(ROOM)
