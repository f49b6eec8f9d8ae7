"""The soak's failure bound (``failure_bound.py``), on made-up outcomes.

Spec: a failure is explained only by a process kill it overlapped (retries
included, plus a second after the restart) or, outside kills, as an SSE error
after an injected reset of decode's answer, one per reset; an ``error`` outside
a kill, or more cut streams than resets, is a lost retry and fails the bound.
"""

from __future__ import annotations

from chaos.failure_bound import Kill, bound
from chaos.load import Outcome

KILLS = [Kill("decode", start=100.0, end=130.0)]
ONE_DECODE_RESET = {"decode reset": 1, "prefill delay": 1, "client abort": 1}


def outcome(kind: str, began: float, elapsed: float = 2.0) -> Outcome:
    return Outcome(kind, began=began, elapsed=elapsed)


def test_failures_in_flight_at_a_kill_are_explained():
    outcomes = [
        outcome("error", 95.0, 6.0),  # sent before the kill, answered during it
        outcome("router_gone", 130.5),  # sent within a second of the restart
        outcome("ok", 10.0),
    ]
    b = bound(outcomes, KILLS, {})
    assert b.explained(), b.figures()
    assert (b.failed_in_flight_at_kills, b.in_flight_at_kills) == (2, 2), b.figures()


def test_an_error_outside_every_kill_is_not_explained_even_with_faults_injected():
    b = bound([outcome("error", 10.0)], KILLS, ONE_DECODE_RESET)
    assert not b.explained(), f"a lost retry must fail the soak: {b.figures()}"


def test_a_cut_stream_outside_kills_is_explained_by_a_decode_reset_once():
    one = bound([outcome("stream_error", 10.0)], KILLS, ONE_DECODE_RESET)
    assert one.explained(), one.figures()
    cut = [outcome("stream_error", 10.0), outcome("stream_error", 50.0)]
    two = bound(cut, KILLS, ONE_DECODE_RESET)
    assert not two.explained(), f"one reset cuts one stream: {two.figures()}"
    none = bound([outcome("stream_error", 10.0)], KILLS, {"decode delay": 1})
    assert not none.explained(), f"a delay must not cut a stream: {none.figures()}"


def test_a_request_that_ended_before_the_kill_is_not_in_flight():
    b = bound([outcome("error", 90.0, 5.0)], KILLS, {})
    assert b.in_flight_at_kills == 0 and not b.explained(), b.figures()
