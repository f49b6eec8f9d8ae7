"""Overlap scheduling's host side: ``Scheduler.schedule_after`` plans the decode step
after one whose tokens are still on the GPU, and ``Sampler.overlappable`` says which
requests can be sampled that way. (The engine's launches need CUDA graphs: see
``plugins/cuda/tests/test_gpu_engine.py``.)"""

from __future__ import annotations

import pytest
from engine.harness import bare_scheduler

from pdcore.engine.sampler import Sampler
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.request import Req
from pdcore.scheduler.scheduler import Sampled, Scheduler

PAGE = 4


def _scheduler(pages: int) -> Scheduler:
    return bare_scheduler(pages, PAGE)


def _decoding(sched: Scheduler, *prompt_lens: int):
    """Requests admitted, prefilled and committed: the next batch is a decode batch."""
    reqs = [
        Req(f"r{i}", list(range(100, 100 + n)), SamplingParams(max_new_tokens=64))
        for i, n in enumerate(prompt_lens)
    ]
    for r in reqs:
        sched.add(r)
    prefill = sched.schedule()
    sched.commit(prefill, [Sampled(7)] * len(reqs))
    batch = sched.schedule()
    assert batch.is_decode, "setup: the step after the prefill must be a decode step"
    return reqs, batch


def test_the_step_after_is_the_same_batch_one_position_further():
    sched = _scheduler(32)
    reqs, batch = _decoding(sched, 5, 9)
    nxt = sched.schedule_after(batch)
    assert nxt is not None
    assert nxt.reqs == reqs and nxt.is_decode
    assert nxt.prefix_lens == [p + 1 for p in batch.prefix_lens]
    assert nxt.extend_lens == [1, 1] and nxt.sample == [True, True]


def test_a_row_crossing_a_page_boundary_gets_its_page_now():
    sched = _scheduler(32)
    (req,), batch = _decoding(sched, 6)  # decode writes position 6; the next one 7, then 8
    assert batch.prefix_lens == [6] and len(req.pages) == 2
    nxt = sched.schedule_after(batch)
    assert nxt.prefix_lens == [7] and len(req.pages) == 2, "position 7 is still in page 1"
    sched.commit(batch, [Sampled(8)])
    after = sched.schedule_after(nxt)
    assert after.prefix_lens == [8]
    assert len(req.pages) == 3, "position 8 starts page 2: it must be allocated up front"


def test_committing_both_steps_leaves_the_request_where_plain_scheduling_would():
    sched = _scheduler(32)
    (req,), batch = _decoding(sched, 6)
    nxt = sched.schedule_after(batch)
    sched.commit(batch, [Sampled(8)])
    sched.commit(nxt, [Sampled(9)])
    assert req.output_ids == [7, 8, 9]
    assert req.computed_len == 8
    plain = sched.schedule()
    assert plain.prefix_lens == [8] and plain.reqs == [req]


def test_no_step_after_while_a_request_waits():
    sched = _scheduler(32)
    _, batch = _decoding(sched, 5)
    sched.add(Req("late", list(range(100, 110)), SamplingParams(max_new_tokens=4)))
    assert sched.schedule_after(batch) is None, "the waiting request must be prefilled first"


def test_no_step_after_once_the_batch_changed():
    sched = _scheduler(32)
    reqs, batch = _decoding(sched, 5, 9)
    sched.abort(reqs[0].rid)
    assert sched.schedule_after(batch) is None


def test_no_step_after_a_batch_already_committed():
    sched = _scheduler(32)
    _, batch = _decoding(sched, 5)
    sched.commit(batch, [Sampled(8)])
    assert sched.schedule_after(batch) is None, "its rows are no longer at those positions"


def test_no_step_after_when_its_page_would_need_a_retraction():
    sched = _scheduler(3)
    (req,), batch = _decoding(sched, 7)  # pages 0-1; decode writes position 7
    held = sched.alloc_pages(1)  # the last page: held by a PD queue, say
    assert sched.schedule_after(batch) is None, "position 8 needs a third page"
    assert len(req.pages) == 2, "nothing taken"
    sched.allocator.free(held)
    assert sched.schedule_after(batch) is not None and len(req.pages) == 3


def test_no_step_after_a_prefill():
    sched = _scheduler(32)
    sched.add(Req("p", list(range(100, 110)), SamplingParams(max_new_tokens=4)))
    prefill = sched.schedule()
    assert not prefill.is_decode
    assert sched.schedule_after(prefill) is None


def _req(**params) -> Req:
    return Req("r", [1, 2, 3], SamplingParams(**params))


@pytest.mark.parametrize(
    "params",
    [{}, {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 3}, {"min_p": 0.1}],
)
def test_plain_and_sampled_requests_are_overlappable(params):
    assert Sampler.overlappable(_req(**params))


@pytest.mark.parametrize(
    "params",
    [
        {"repetition_penalty": 1.1},
        {"frequency_penalty": 0.5},
        {"presence_penalty": 0.5},
        {"min_new_tokens": 3},
    ],
)
def test_requests_whose_sampling_reads_their_output_are_not_overlappable(params):
    assert not Sampler.overlappable(_req(**params)), params


def test_min_new_tokens_stops_mattering_once_reached():
    req = _req(min_new_tokens=2)
    req.output_ids = [5]
    assert not Sampler.overlappable(req), "EOS is still banned for the next token"
    req.output_ids = [5, 6]
    assert Sampler.overlappable(req)


def test_logprob_requests_are_not_overlappable():
    req = Req("r", [1, 2, 3], SamplingParams(), return_logprob=True)
    assert not Sampler.overlappable(req)
    req = Req("r", [1, 2, 3], SamplingParams(), top_logprobs_num=2)
    assert not Sampler.overlappable(req)


def test_overlapped_engine_equals_plain_engine_on_cpu():
    """The engine's overlap bookkeeping on the CPU: a runner that launches a step from
    the last step's (host) tokens stands in for CUDA graphs. Requests join mid-decode,
    stop on a token already followed by a launched step, are aborted, sample with
    seeds, ask for logprobs: the same outputs as without overlap, and no page leaked."""
    from engine.harness import check_overlap_equals_plain, tiny

    def make(overlap: bool):
        return _overlapping_engine(disable_overlap_schedule=not overlap)

    check_overlap_equals_plain(make, vocab=tiny().config.vocab_size)


def _overlapping_engine(**server_args):
    """A tiny-model CPU engine whose runner launches a step from the last step's tokens,
    standing in for CUDA graphs (``ModelRunner.can_overlap`` is False on a CPU)."""
    import dataclasses

    from engine.harness import make_engine

    engine = make_engine(max_total_tokens=4096, **server_args)
    runner = engine.runner
    runner.can_overlap = lambda batch_size, max_seq_len: True
    runner.forward_after = lambda plan, tokens: runner.execute(
        dataclasses.replace(plan, tokens=tokens.tolist())
    )
    return engine


def _run(engine, reqs, abort_after: int | None = None):
    from engine.harness import collect

    results = {}
    for r in reqs:
        engine.add_request(r)
    steps = 0
    while engine.has_work():
        collect(engine.step(), results)
        engine.kv_usage().check()
        steps += 1
        if steps == abort_after:
            engine.abort(reqs[0].rid)
    return results


def test_a_stop_token_drops_the_row_already_launched_after_it():
    from engine.harness import assert_idle, greedy_req

    prompt = list(range(30, 47))
    plain = _run(_overlapping_engine(disable_overlap_schedule=True), [greedy_req("r", prompt, 20)])
    stop = plain["r"].tokens[9]
    first = plain["r"].tokens.index(stop)
    engine = _overlapping_engine()
    got = _run(engine, [greedy_req("r", prompt, 20, stop_token_ids=[stop])])
    assert got["r"].tokens == plain["r"].tokens[: first + 1]
    assert got["r"].final.finish_reason["type"] == "stop"
    assert engine.overlap_dropped_rows == 1, "the step after the stop token ran and was dropped"
    assert_idle(engine)


def test_an_abort_with_a_step_in_flight_frees_every_page():
    from engine.harness import assert_idle, greedy_req

    engine = _overlapping_engine()
    got = _run(engine, [greedy_req("r", list(range(30, 47)), 40)], abort_after=8)
    assert engine.overlapped_steps > 0, "setup: the abort must come during overlapped steps"
    assert got["r"].final.finish_reason["type"] == "abort"
    assert engine.overlap_dropped_rows == 1, "the launched step's row of the aborted request"
    assert_idle(engine)
