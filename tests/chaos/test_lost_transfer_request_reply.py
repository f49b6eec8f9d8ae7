"""Regression (found by the chaos soak): decode must not free the pages of a room whose
``TransferRequest`` reached prefill but whose reply was lost.

Decode took any failed transfer request for "prefill never got the pages", failed the
room at once and gave its pages to other requests, while prefill, which had the
request, went on to compute and write the KV into them: other requests' answers came
out wrong (the soak saw greedy outputs diverge mid-way). Now decode aborts the room
and frees the pages once prefill acknowledged that no write runs.

A real prefill KV manager + bootstrap server and a decode KV manager in this process
(Mooncake over TCP), decode's control messages through a fault proxy.
"""

from __future__ import annotations

import pytest
from chaos.fault_proxy import Fault, FaultProxy
from disaggregation.pd_peer import wait_state
from fuzz.pd_sides import PDSides

from pdcore.disaggregation.kv_args import KVPoll

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("reset", after_bytes=0, answer_only=True),  # the reply cut
        Fault("reset", after_bytes=0),  # the request cut: prefill never had it
    ],
    ids=["reply-lost", "request-lost"],
)
def test_decode_frees_pages_only_after_prefill_stopped(fault):
    sides = PDSides()
    proxy = FaultProxy(sides.bootstrap.port, "bootstrap")
    try:
        room = 4242
        sender = sides.prefill.sender(room)
        receiver = sides.decode.receiver(room, f"127.0.0.1:{proxy.port}")
        assert wait_state(receiver, 10, {KVPoll.WAITING_FOR_INPUT}) is KVPoll.WAITING_FOR_INPUT
        proxy.arm(fault, match=b"TransferRequest")
        receiver.send_request([1, 2, 3], 0)
        assert wait_state(receiver, 20) is KVPoll.FAILED
        assert "transfer request" in receiver.failure_reason, receiver.failure_reason
        assert proxy.snapshot()["injected"] == {"reset": 1}
        # When decode lets the pages go, prefill will not write them: its room failed
        # (aborted by decode), not READY with decode's page ids.
        state = sender.poll()
        assert state is KVPoll.FAILED, f"prefill's room is {state.name}: it could still write"
    finally:
        proxy.close()
        sides.close()
