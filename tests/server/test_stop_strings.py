"""Stop strings on detokenized text, applied to ``RequestState`` step by step."""

from __future__ import annotations

import asyncio

import pytest
from server.fake_backend import EOS, ByteTokenizer

from pdcore.engine.io_struct import TokenOut
from pdcore.sampling_params import SamplingParams
from pdcore.server.request_state import GenerateInput, RequestState
from pdcore.server.stop_strings import find_stop, partial_stop_len


def test_find_stop_takes_the_earliest_then_longest():
    assert find_stop("abcabc", ["c", "b"]) == (1, "b")
    assert find_stop("abcd", ["bc", "bcd"]) == (1, "bcd")
    assert find_stop("abc", ["x"]) is None
    assert find_stop("abcabc", ["a"], start=1) == (3, "a")


def test_partial_stop_len_is_the_longest_proper_prefix_suffix():
    assert partial_stop_len("Hello wo", ["world"]) == 2
    assert partial_stop_len("Hello w", ["xyz", "wor"]) == 1
    assert partial_stop_len("Hello world", ["world"]) == 0  # a full match is not partial
    assert partial_stop_len("aaa", ["aab"]) == 2


def make_state(stops, stop_trim=True):
    params = SamplingParams(max_new_tokens=100, stop=stops)
    inp = GenerateInput([1, 2], params, "r", stop_trim=stop_trim)
    return RequestState(inp, ByteTokenizer().detokenizer(), asyncio.Event())


def feed(state, chunks, finish=None):
    """Apply text chunks (each one engine step of several byte tokens)."""
    stopped = []
    for i, chunk in enumerate(chunks):
        reason = finish if i == len(chunks) - 1 else None
        stopped.append(state.apply(TokenOut("r", list(chunk.encode()), finish_reason=reason), 0.0))
    return stopped


@pytest.mark.parametrize(
    "chunks",
    [
        ["Hel", "lo, wo", "rld! more"],  # stop spans steps, text continues after it
        ["Hello, world! more"],  # all in one step
        list("Hello, world! more"),  # one character per step
    ],
)
def test_stop_spanning_steps_cuts_text_and_reports_once(chunks):
    state = make_state(["world"])
    stopped = feed(state, chunks)
    assert stopped.count(True) == 1  # later steps are ignored: the request is over
    assert state.text == "Hello, " and state.visible_text == "Hello, "
    assert state.finish_reason == {"type": "stop", "matched": "world"}


def test_text_that_may_start_a_stop_is_held_back_until_resolved():
    state = make_state(["world"])
    feed(state, ["Hello, wo"])
    assert state.visible_text == "Hello, "
    feed(state, ["nder"])
    assert state.visible_text == "Hello, wonder"


def test_held_back_text_is_released_when_the_engine_finishes():
    state = make_state(["world"])
    feed(state, ["Hello, wor"], finish={"type": "length"})
    assert state.visible_text == "Hello, wor"
    assert state.finish_reason == {"type": "length", "length": 10}


def test_stop_inside_a_multibyte_boundary():
    state = make_state(["é你"])
    ids = list("abé你c".encode())
    for t in ids:
        state.apply(TokenOut("r", [t]), 0.0)
    assert state.text == "ab" and state.finish_reason["matched"] == "é你"


def test_no_stop_trim_keeps_the_stop_string():
    state = make_state(["world"], stop_trim=False)
    feed(state, ["Hello, world! more"])
    assert state.visible_text == "Hello, world"


def test_eos_token_is_not_rendered_and_later_outputs_are_ignored():
    state = make_state([])
    state.apply(TokenOut("r", [*b"ok", EOS], finish_reason={"type": "stop", "matched": EOS}), 0.0)
    assert state.visible_text == "ok" and state.completion_tokens == 3
    assert state.apply(TokenOut("r", [*b"late"]), 0.0) is False
    assert state.visible_text == "ok"
