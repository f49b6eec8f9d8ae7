"""A PD decode engine streams the first token (computed by prefill) as soon as its
KV has arrived, without waiting for the next decode forward of the running batch."""

from __future__ import annotations

import msgspec
from engine.harness import greedy_req, make_engine

from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST
from pdcore.engine.io_struct import TokenOut


def pd_req(rid: str, prompt: list[int], room: int, max_new_tokens: int = 8):
    base = greedy_req(rid, prompt, max_new_tokens=max_new_tokens)
    return msgspec.structs.replace(
        base, bootstrap_host=FAKE_BOOTSTRAP_HOST, bootstrap_port=1, bootstrap_room=room
    )


def tokens_of(outs, rid: str) -> list[int]:
    return [t for o in outs if isinstance(o, TokenOut) and o.rid == rid for t in o.token_ids]


def test_first_token_goes_out_before_the_next_decode_forward():
    engine = make_engine(disaggregation_mode="decode", disaggregation_transfer_backend="fake")
    forwards = 0
    forward = engine.runner.forward

    def counting_forward(batch):
        nonlocal forwards
        forwards += 1
        return forward(batch)

    engine.runner.forward = counting_forward
    engine.add_request(pd_req("a", [5, 6, 7, 8, 9], room=11, max_new_tokens=16))
    for _ in range(20):  # a is decoding
        engine.step()
        if forwards >= 2:
            break
    assert forwards >= 2, "request a never started decoding"

    engine.add_request(pd_req("b", [3, 4, 5, 6], room=12))
    before = forwards
    outs = []
    for _ in range(5):
        outs = engine.step()
        if tokens_of(outs, "b"):
            break
    assert len(tokens_of(outs, "b")) == 1, f"b's first token not streamed alone: {outs}"
    assert forwards == before, (
        f"{forwards - before} decode forward(s) ran before b's first token went out"
    )
