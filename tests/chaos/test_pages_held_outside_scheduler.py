"""Regressions found by the chaos suite: KV pages held outside the scheduler.

On a PD decode server, requests waiting for their KV hold pages in the decode queues,
not in ``Scheduler.running``. The scheduler took "nothing of mine runs" for "nothing
holds pages":

* a retracted request that could not be re-admitted while nothing ran was finished
  with "the request does not fit the KV cache" (the KV-exhaustion test);
* a lone running request that could not get its next page was finished with "KV
  cache is full" (a prefill paused while decode waited for its KV);

in both cases the client got a 200 with fewer tokens than asked for. Once they wait
instead, decode must not hand freed pages to new transfers while retracted requests
wait, or those starve (requests hung for a minute under the soak's load).
"""

from __future__ import annotations

from engine.harness import bare_scheduler

from pdcore.disaggregation.kv_args import KVPoll
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.decode import DecodeQueues
from pdcore.scheduler.request import Req, ReqStatus
from pdcore.scheduler.scheduler import Sampled, Scheduler

PAGE = 4


def _scheduler(pages: int) -> Scheduler:
    return bare_scheduler(pages, PAGE)


def _req(rid: str, tokens: int) -> Req:
    return Req(rid, list(range(100, 100 + tokens)), SamplingParams(max_new_tokens=4))


def test_waits_while_a_pd_queue_holds_pages_then_runs():
    sched = _scheduler(10)
    held = sched.alloc_pages(6)  # what decode's transfer queue holds for another request
    req = _req("r", 6 * PAGE)  # 6 pages: fits the pool, not the 4 pages left now
    sched.add(req)
    assert sched.schedule() is None
    assert req.status is ReqStatus.WAITING and req.finish_reason is None
    assert sched.finished_unreported == [] and list(sched.waiting) == [req]

    sched.allocator.free(held)  # that transfer ended: the request gets its pages
    batch = sched.schedule()
    assert batch is not None and batch.reqs == [req]


def test_a_request_that_can_never_fit_is_still_refused_when_nothing_holds_pages():
    sched = _scheduler(10)
    req = _req("big", 11 * PAGE)  # more than the pool
    sched.add(req)
    assert sched.schedule() is None
    assert sched.finished_unreported == [req]
    assert req.finish_reason["message"] == "the request does not fit the KV cache"


def test_a_lone_running_request_waits_for_pages_a_pd_queue_holds():
    sched = _scheduler(4)
    req = _req("r", PAGE - 1)
    sched.add(req)
    for _ in range(2):  # prefill, then one decode step: one page, full
        sched.commit(sched.schedule(), [Sampled(7)])
    assert req.computed_len == PAGE and len(req.pages) == 1
    held = sched.alloc_pages(3)  # the rest: held by decode's transfer queue
    assert sched.schedule() is None  # its next token needs a page: it waits
    assert req.finish_reason is None and sched.running == [req]
    assert sched.finished_unreported == []
    sched.allocator.free(held)
    batch = sched.schedule()
    assert batch is not None and batch.is_decode and batch.reqs == [req]


def test_decode_gives_no_pages_to_new_transfers_while_a_request_waits():
    sched = _scheduler(10)
    queues = DecodeQueues(sched, None)
    retracted = _req("retracted", 8 * PAGE)
    sched.add(retracted)  # in the waiting queue, as after a retraction
    sched.waiting[0].status = ReqStatus.WAITING
    incoming = _req("incoming", PAGE)
    queues.add(incoming, room=1, bootstrap_addr="2.2.2.2:1", fake=True)
    queues.poll()
    assert "incoming" in queues.prealloc and incoming.pages == []
    assert queues.receivers["incoming"].poll() is KVPoll.WAITING_FOR_INPUT
    sched.waiting.clear()
    sched.reqs.clear()
    queues.poll()
    assert "incoming" not in queues.prealloc and incoming.pages
