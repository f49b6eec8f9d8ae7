"""The TP leader sends per-step deltas; a follower's mirror rebuilds the exact plan.

Each test runs the leader's ``PlanSender`` and a follower's ``PlanMirror`` in one
process, through the real msgpack bytes (encoded, then decoded with the type),
over a sequence of steps that exercises what a running server does to a
request's pages: prefill chunks, decode growth, prefix-cache page swaps,
retraction, finishing.
"""

from __future__ import annotations

import msgspec
import pytest

from pdcore.distributed.wire import WireError, decode
from pdcore.engine.step_delta import WHAT, PlanMirror, PlanSender, StepDelta
from pdcore.engine.step_plan import StepPlan
from pdcore.sampling_params import SamplingParams
from pdcore.scheduler.request import Req, ReqStatus, finish_reason
from pdcore.scheduler.scheduler import ScheduledBatch

PS = 4


def _req(rid: str, n: int) -> Req:
    req = Req(rid, list(range(100, 100 + n)), SamplingParams())
    req.status = ReqStatus.RUNNING
    return req


def _wire(delta: StepDelta) -> StepDelta:
    return decode(msgspec.msgpack.encode(delta), StepDelta, WHAT)


def _step(sender: PlanSender, mirror: PlanMirror, batch: ScheduledBatch):
    plan = StepPlan.from_batch(batch, PS)
    delta = sender.delta(plan, batch.reqs)
    got = mirror.apply(_wire(delta))
    return plan, delta, got


def _assert_same(plan: StepPlan, got: StepPlan, when: str) -> None:
    names = ("is_decode", "tokens", "prefix_lens", "extend_lens", "pages", "sample")
    for name in (*names, "prompt_spans", "prompt_targets", "prompt_top"):
        assert getattr(got, name) == getattr(plan, name), (
            f"{when}: the follower's {name} differs from the leader's; its forward would diverge"
        )


def _decode(reqs: list[Req]) -> ScheduledBatch:
    """One decode step: each request gained a sampled token and, when its last page
    is full, a new page."""
    for r in reqs:
        r.output_ids.append(7)
        r.computed_len = r.seq_len - 1
        if r.computed_len // PS >= len(r.pages):
            r.pages.append(1000 + len(r.pages))
    n = len(reqs)
    return ScheduledBatch(True, reqs, [r.computed_len for r in reqs], [1] * n, [True] * n)


def _prefill(reqs: list[Req]) -> ScheduledBatch:
    for r in reqs:
        first = 100 * int(r.rid[1:])
        r.pages = list(range(first, first + -(-r.seq_len // PS)))
        r.computed_len = r.seq_len
    n = len(reqs)
    return ScheduledBatch(False, reqs, [0] * n, [r.seq_len for r in reqs], [True] * n)


def test_mirror_rebuilds_every_plan_of_a_run():
    sender, mirror = PlanSender(), PlanMirror(PS)
    a, b = _req("r1", 6), _req("r2", 3)
    plan, _, got = _step(sender, mirror, _prefill([a, b]))
    _assert_same(plan, got, "prefill")
    for i in range(9):
        plan, _, got = _step(sender, mirror, _decode([a, b]))
        _assert_same(plan, got, f"decode step {i}")


def test_decode_steps_send_only_new_pages():
    sender, mirror = PlanSender(), PlanMirror(PS)
    reqs = [_req(f"r{i}", 41) for i in range(1, 5)]
    _step(sender, mirror, _prefill(reqs))
    _, delta, _ = _step(sender, mirror, _decode(reqs))
    assert delta.keep == [11] * 4, f"every row keeps its 11 mirrored pages, got {delta.keep}"
    assert delta.new_pages == [[]] * 4, (
        f"a decode step inside a page sends no pages, got {delta.new_pages}"
    )
    full = msgspec.msgpack.encode(StepPlan.from_batch(_decode(reqs), PS).__dict__)
    small = msgspec.msgpack.encode(sender.delta(StepPlan.from_batch(_decode(reqs), PS), reqs))
    assert len(small) < len(full) / 2, (
        f"the delta ({len(small)} B) must be far smaller than the plan ({len(full)} B)"
    )


def test_pages_swapped_in_place_are_resent():
    """After prefill the prefix cache may swap a request's first pages for shared ones
    (``req.pages[:n] = ...``): the mirror must follow, not keep the old ones."""
    sender, mirror = PlanSender(), PlanMirror(PS)
    a = _req("r1", 9)
    _step(sender, mirror, _prefill([a]))
    a.pages[:2] = [500, 501]
    plan, delta, got = _step(sender, mirror, _decode([a]))
    assert delta.keep == [0], f"a swapped first page means nothing is kept, got {delta.keep}"
    _assert_same(plan, got, "decode after a page swap")


def test_retracted_request_comes_back_with_new_pages():
    sender, mirror = PlanSender(), PlanMirror(PS)
    a, b = _req("r1", 8), _req("r2", 8)
    _step(sender, mirror, _prefill([a, b]))
    _step(sender, mirror, _decode([a, b]))
    b.pages, b.computed_len = [], 0  # retracted: its pages went back
    plan, _, got = _step(sender, mirror, _decode([a]))
    _assert_same(plan, got, "decode without the retracted request")
    b.pages = [900, 901, 902]
    n = b.seq_len
    b.computed_len = n
    plan, _, got = _step(sender, mirror, ScheduledBatch(False, [b], [0], [n], [True]))
    _assert_same(plan, got, "the retracted request prefilled again")


def test_finished_requests_leave_both_sides():
    sender, mirror = PlanSender(), PlanMirror(PS)
    a, b = _req("r1", 5), _req("r2", 5)
    _step(sender, mirror, _prefill([a, b]))
    a.finish(finish_reason("length"))
    _, delta, _ = _step(sender, mirror, _decode([b]))
    assert len(delta.done) == 1, f"the finished request's handle is sent once, got {delta.done}"
    assert sender.tracked == 1 and len(mirror.pages) == 1, (
        f"finished requests must not pile up: leader tracks {sender.tracked}, "
        f"follower mirrors {len(mirror.pages)}"
    )


def test_a_missed_step_fails_loudly():
    sender, mirror = PlanSender(), PlanMirror(PS)
    a = _req("r1", 5)
    sender.delta(StepPlan.from_batch(_prefill([a]), PS), [a])  # never reaches the follower
    delta = sender.delta(StepPlan.from_batch(_decode([a]), PS), [a])
    with pytest.raises(WireError, match="got step 2 after step 0"):
        mirror.apply(_wire(delta))


def test_a_replayed_step_fails_loudly():
    sender, mirror = PlanSender(), PlanMirror(PS)
    a = _req("r1", 5)
    _, delta, _ = _step(sender, mirror, _prefill([a]))
    with pytest.raises(WireError, match="got step 1 after step 1"):
        mirror.apply(_wire(delta))


def test_keeping_pages_the_follower_never_had_is_refused():
    mirror = PlanMirror(PS)
    bad = StepDelta(seq=1, tokens=[5], prefix_lens=[8], extend_lens=[1], sample=[True],
                    handles=[3], keep=[2], new_pages=[[9]])  # fmt: skip
    with pytest.raises(WireError, match="keeps 2 pages of request handle 3, which has 0"):
        mirror.apply(bad)


def test_a_page_count_that_does_not_fit_the_row_is_refused():
    mirror = PlanMirror(PS)
    bad = StepDelta(seq=1, tokens=[1] * 9, prefix_lens=[0], extend_lens=[9], sample=[True],
                    handles=[0], keep=[0], new_pages=[[1, 2]])  # fmt: skip
    with pytest.raises(WireError, match="2 pages for 9 tokens"):
        mirror.apply(bad)


def test_rows_of_different_lengths_are_refused():
    mirror = PlanMirror(PS)
    bad = StepDelta(seq=1, tokens=[1], prefix_lens=[0, 0], extend_lens=[1], sample=[True],
                    handles=[0], keep=[0], new_pages=[[1]])  # fmt: skip
    with pytest.raises(WireError, match="rows of different lengths"):
        mirror.apply(bad)


def test_stop_ends_the_follower():
    sender, mirror = PlanSender(), PlanMirror(PS)
    assert mirror.apply(_wire(sender.stop())).stop, "a stop delta must reach the follower as stop"


def test_prompt_logprob_spans_reach_the_follower():
    req = _req("r1", 10)
    req.return_logprob, req.top_logprobs_num, req.logprob_start_len = True, 2, 3
    plan, _, got = _step(PlanSender(), PlanMirror(PS), _prefill([req]))
    assert plan.prompt_spans == [(3, 9)], "the test needs a plan that scores prompt positions"
    _assert_same(plan, got, "a prefill scoring prompt logprobs")


def test_prompt_targets_that_do_not_match_the_spans_are_refused():
    mirror = PlanMirror(PS)
    bad = StepDelta(
        seq=1,
        tokens=[1, 2],
        prefix_lens=[0],
        extend_lens=[2],
        sample=[True],
        handles=[0],
        keep=[0],
        new_pages=[[5]],
        prompt_spans=[(0, 1)],
        prompt_targets=[],
    )
    with pytest.raises(WireError, match="prompt positions"):
        mirror.apply(_wire(bad))
