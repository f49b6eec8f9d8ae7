"""PrefillQueues over the real scheduler with a scripted sender: which pages go when,
and that no page is released while its sender may still read it."""

from __future__ import annotations

from engine.harness import pd_queue_step as step

from pdcore.disaggregation.kv_args import FINAL, KVPoll
from pdcore.kvcache.allocator import PageAllocator
from pdcore.kvcache.radix_cache import RadixCache
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.prefill import PrefillQueues
from pdcore.scheduler.request import Req
from pdcore.scheduler.scheduler import Scheduler, SchedulerConfig

PS = 4


class ScriptedSender:
    def __init__(self):
        self.state = KVPoll.WAITING_FOR_DECODE
        self.chunks: list[tuple[list[int], bool, object]] = []
        self.failure_reason = ""

    def poll(self):
        return self.state

    def send_chunk(self, pages, is_last, aux=None):
        if self.state is not KVPoll.FAILED:
            self.chunks.append((list(pages), is_last, aux))

    def abort(self, reason=""):
        if self.state not in FINAL:
            self.state, self.failure_reason = KVPoll.FAILED, reason


class ScriptedManager:
    def __init__(self):
        self.senders: dict[int, ScriptedSender] = {}

    def sender(self, room):
        self.senders[room] = ScriptedSender()
        return self.senders[room]

    def stats(self):
        return {}

    def take_transfers(self):
        return []  # no real writes: no per-room transfer records


def setup(chunk: int = 6):
    alloc = PageAllocator(33)
    sched = Scheduler(
        SchedulerConfig(
            page_size=PS,
            max_running_requests=8,
            chunked_prefill_size=chunk,
            max_prefill_tokens=64,
            context_length=128,
        ),
        alloc,
        RadixCache(PS, alloc),
    )
    mgr = ScriptedManager()
    return sched, PrefillQueues(sched, mgr), mgr


def test_chunks_send_completed_pages_and_hold_until_success():
    sched, queues, mgr = setup()
    req = Req("a", list(range(1, 15)), SamplingParams(max_new_tokens=20))  # 14 tokens
    queues.add(req, room=5)
    sender = mgr.senders[5]
    assert step(sched, queues) == [] and not sched.running  # decode not ready: no pages
    sender.state = KVPoll.READY
    for _ in range(3):  # chunks of 6, 6, 2 tokens
        step(sched, queues)
    pages = [p for p, _, _ in sender.chunks]
    assert [len(p) for p in pages] == [1, 2, 1]  # 6 tokens: 1 full page; 12: 3; last: 4
    assert [last for _, last, _ in sender.chunks] == [False, False, True]
    assert sender.chunks[-1][2].token_id == 7
    assert len({p for ps in pages for p in ps}) == 4
    free_before = sched.allocator.num_free
    assert step(sched, queues) == [] and sched.allocator.num_free == free_before  # held
    assert queues.held_pages() > 0
    sender.state = KVPoll.SUCCESS
    assert step(sched, queues) == [req] and req.output_ids == [7]
    assert queues.held_pages() == 0 and not queues.has_work()
    assert sched.allocator.num_free + sched.cache.cached_pages == sched.allocator.capacity


def test_decode_failing_mid_prefill_stops_the_request_and_reports_it():
    sched, queues, mgr = setup(chunk=4)
    req = Req("b", list(range(1, 30)), SamplingParams(max_new_tokens=20))
    queues.add(req, room=9)
    sender = mgr.senders[9]
    sender.state = KVPoll.READY
    step(sched, queues)
    step(sched, queues)
    sender.state, sender.failure_reason = KVPoll.FAILED, "decode went away"
    assert step(sched, queues) == [("b", "decode went away")]
    assert not sched.running and not queues.has_work() and not queues.knows("b")
    assert sched.allocator.num_free + sched.cache.evictable_pages == sched.allocator.capacity


def test_requests_waiting_for_decode_or_transfer_count_as_waiting():
    """The router balances on running + waiting; PD's queues are load too."""
    sched, queues, mgr = setup()
    queues.add(Req("a", list(range(1, 15)), SamplingParams(max_new_tokens=2)), room=5)
    queues.add(Req("b", list(range(1, 9)), SamplingParams(max_new_tokens=2)), room=6)
    assert queues.num_waiting() == 2, "both wait for their decode"
    mgr.senders[6].state = KVPoll.READY
    step(sched, queues)
    assert queues.num_waiting() == 1, "b left the bootstrap queue for the scheduler"


def test_fake_room_needs_no_decode_and_succeeds_after_the_last_chunk():
    sched, queues, mgr = setup()
    req = Req("warm", list(range(1, 10)), SamplingParams(max_new_tokens=5))
    queues.add(req, room=9, fake=True)
    assert 9 not in mgr.senders, "a fake room never reaches the transfer manager"
    reports = []
    for _ in range(4):
        reports += step(sched, queues)
    assert reports == [req] and req.output_ids == [7]
    assert sched.allocator.num_free + sched.cache.evictable_pages == 32, "no page held"
