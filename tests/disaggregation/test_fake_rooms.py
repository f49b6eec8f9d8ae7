"""The fake transfer path's rooms: no peer, success as soon as each side is done."""

from pdcore.disaggregation.fake import FakeKVReceiver, FakeKVSender
from pdcore.disaggregation.kv_args import KVPoll


def test_fake_sender_is_ready_at_once_and_succeeds_after_the_last_chunk():
    sender = FakeKVSender(3)
    assert sender.poll() is KVPoll.READY, "no decode to wait for"
    sender.send_chunk([1, 2], is_last=False)
    assert sender.poll() is KVPoll.READY
    sender.send_chunk([], is_last=True)
    assert sender.poll() is KVPoll.SUCCESS


def test_fake_receiver_succeeds_once_it_has_pages_and_reports_the_stand_in_token():
    receiver = FakeKVReceiver(4, first_token=9)
    assert receiver.poll() is KVPoll.WAITING_FOR_INPUT
    receiver.send_request([5, 6], aux_slot=-1)
    assert receiver.poll() is KVPoll.SUCCESS
    assert receiver.aux().token_id == 9


def test_aborted_fake_room_fails_with_the_reason_and_stays_failed():
    receiver = FakeKVReceiver(5, first_token=1)
    receiver.abort("client left")
    receiver.send_request([5], aux_slot=-1)
    assert receiver.poll() is KVPoll.FAILED and receiver.failure_reason == "client left"
