"""Conditional disaggregation inside the engine: a decode engine prefills short
prompts itself exactly as a null-mode engine would, and a prefill engine answers a
room decode served with an abort marked ``pd_local_prefill`` (no error), its pages freed."""

from __future__ import annotations

import msgspec
from engine.harness import assert_idle, drain, greedy_req, make_engine
from engine.harness import pd_queue_step as step

from pdcore.disaggregation.fake import FakeKVReceiver
from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.disaggregation.protocol import SERVED_BY_DECODE
from pdcore.kvcache.allocator import PageAllocator
from pdcore.kvcache.radix_cache import RadixCache
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.prefill import PrefillQueues
from pdcore.scheduler.request import Req
from pdcore.scheduler.scheduler import Scheduler, SchedulerConfig

THRESHOLD = 24  # decode's chunk is 16 tokens: a local prompt of 20 takes two chunks
ADDR = "10.0.0.1:8998"


class DropRecorder:
    """Decode's KV manager, reduced to what conditional disaggregation touches."""

    def __init__(self):
        self.dropped: list[tuple[int, str]] = []
        self.opened: list[int] = []

    def drop_room(self, room: int, addr: str) -> None:
        self.dropped.append((room, addr))

    def receiver(self, room: int, addr: str) -> FakeKVReceiver:
        self.opened.append(room)
        return FakeKVReceiver(room, 3)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def decode_engine():
    engine = make_engine(disaggregation_mode="decode", disaggregation_transfer_backend="fake")
    engine.pd.manager = manager = DropRecorder()
    engine.pd.local_prefill_threshold = THRESHOLD
    return engine, manager


def pd_req(rid: str, prompt: list[int], room: int):
    base = greedy_req(rid, prompt, max_new_tokens=10)
    return msgspec.structs.replace(
        base, bootstrap_host="10.0.0.1", bootstrap_port=8998, bootstrap_room=room
    )


def run(engine, reqs) -> dict:
    for r in reqs:
        engine.add_request(r)
    return drain(engine)


def test_short_prompts_are_prefilled_on_decode_like_null_mode():
    short = list(range(5, 25))  # 20 tokens: two chunks of prefill on decode
    longer = short + list(range(40, 52))  # 32 tokens, 20 of them in decode's cache by then
    null = make_engine()
    with_logprobs = greedy_req("a", short, max_new_tokens=10)
    want = run(null, [msgspec.structs.replace(with_logprobs, return_logprob=True)])
    want |= run(null, [greedy_req("b", longer, max_new_tokens=10)])
    engine, manager = decode_engine()
    got = run(engine, [msgspec.structs.replace(pd_req("a", short, 11), return_logprob=True)])
    assert engine.pd.tokens_to_prefill(longer) == len(longer) - len(short), "a's pages: a hit"
    got |= run(engine, [pd_req("b", longer, 12)])
    for rid in "ab":
        assert got[rid].tokens == want[rid].tokens, rid
        assert got[rid].final.pd_local_prefill, f"{rid} not marked as prefilled on decode"
    assert got["a"].logprobs == want["a"].logprobs
    assert manager.dropped == [(11, ADDR), (12, ADDR)] and manager.opened == []
    assert engine.pd.metrics.local_prefill == 2
    assert engine.stats().disaggregation["local_prefill_reqs"] == 2
    assert_idle(engine)


def test_prompts_over_the_threshold_still_wait_for_prefill():
    engine, manager = decode_engine()
    got = run(engine, [pd_req("c", list(range(5, 5 + THRESHOLD + 1)), 13)])
    assert manager.opened == [13] and manager.dropped == []
    assert not got["c"].final.pd_local_prefill
    assert engine.pd.metrics.local_prefill == 0


def test_threshold_zero_never_prefills_on_decode():
    engine, manager = decode_engine()
    engine.pd.local_prefill_threshold = 0
    run(engine, [pd_req("d", [5, 6, 7], 14)])
    assert manager.opened == [14] and manager.dropped == []


# ---- prefill: the room decode served ---------------------------------------------


class ServedSender:
    """A prefill room that decode drops (``served_by_decode``) when told to."""

    def __init__(self):
        self.state = KVPoll.WAITING_FOR_DECODE
        self.failure_reason = ""
        self.served_by_decode = False
        self.chunks = 0

    def poll(self):
        return self.state

    def send_chunk(self, pages, is_last, aux=None):
        self.chunks += 1

    def abort(self, reason=""):
        if self.state not in FINAL:
            self.state, self.failure_reason = KVPoll.FAILED, reason

    def served(self):
        self.state, self.failure_reason = KVPoll.FAILED, SERVED_BY_DECODE
        self.served_by_decode = True


class SenderManager:
    def __init__(self):
        self.senders: dict[int, ServedSender] = {}

    def sender(self, room):
        self.senders[room] = ServedSender()
        return self.senders[room]

    def take_transfers(self):
        return []


def prefill_queues():
    alloc = PageAllocator(33)
    config = SchedulerConfig(
        page_size=4,
        max_running_requests=8,
        chunked_prefill_size=4,
        max_prefill_tokens=64,
        context_length=128,
    )
    sched = Scheduler(config, alloc, RadixCache(4, alloc))
    mgr = SenderManager()
    return sched, PrefillQueues(sched, mgr), mgr


def assert_served_report(reports, req, queues, sched):
    assert reports == [req], reports
    assert req.finish_reason["type"] == "abort" and req.pd_local_prefill
    assert req.finish_reason["message"] == SERVED_BY_DECODE
    assert req.sent_tokens == len(req.output_ids), "prefill must not answer with tokens"
    assert not queues.has_work() and not queues.knows(req.rid) and not sched.running
    assert queues.metrics.failed == {"bootstrap": 0, "transfer": 0}
    assert queues.metrics.local_prefill == 1
    assert sched.allocator.num_free + sched.cache.evictable_pages == sched.allocator.capacity


def test_prefill_reports_a_room_served_before_it_started():
    sched, queues, mgr = prefill_queues()
    req = Req("p", list(range(1, 15)), SamplingParams(max_new_tokens=20))
    queues.add(req, room=5)
    assert step(sched, queues) == []
    mgr.senders[5].served()
    assert_served_report(step(sched, queues), req, queues, sched)


def test_prefill_mid_chunk_stops_frees_and_reports_served():
    sched, queues, mgr = prefill_queues()
    req = Req("q", list(range(1, 30)), SamplingParams(max_new_tokens=20))
    queues.add(req, room=6)
    sender = mgr.senders[6]
    sender.state = KVPoll.READY
    step(sched, queues)
    step(sched, queues)
    assert sched.running and sender.chunks == 2, "two of its chunks are on their way"
    sender.served()
    assert_served_report(step(sched, queues), req, queues, sched)
