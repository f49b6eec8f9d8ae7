"""Ranks trade typed, authenticated messages (real gloo ranks on 127.0.0.1).

With ``--disaggregation-secret`` every rank must prove at startup that it holds
the same secret, or startup fails on every rank with an error naming the flag,
quickly (no rank left waiting). Whatever bytes arrive where a step plan is
expected are decoded as a step plan only: garbage and pickles are a clear
error, never objects built in the follower.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from parallel.wire_ranks import STEP_TOKENS, run_pair

from pdcore.distributed.handshake import check_proofs, proof
from pdcore.distributed.wire import WireError, decode, seal, unseal
from pdcore.engine.step_delta import StepDelta

pytestmark = pytest.mark.timeout(300)

FLAG = "--disaggregation-secret"


@pytest.fixture(scope="module")
def traded(tmp_path_factory) -> tuple[dict, object]:
    """One pair of ranks sharing a secret: a step, garbage, then a pickle
    (``wire_ranks._trade``); the ranks' reports and the pickle's marker path."""
    marker = tmp_path_factory.mktemp("wire") / "unpickled"
    return run_pair(("s3cret", "s3cret"), "trade", marker=str(marker)), marker


def test_ranks_with_the_same_secret_join_and_trade_a_sealed_step(traded):
    got, _ = traded
    assert got[0]["one step"] == "sent", f"the leader must send its step: {got[0]}"
    assert got[1]["one step"] == {
        "tokens": STEP_TOKENS, "pages": [[3, 4], [7]], "extend_lens": [5, 1],
    }, f"the follower must rebuild the leader's step exactly: {got[1]}"  # fmt: skip


def test_ranks_with_different_secrets_both_refuse_to_start():
    got = run_pair(("one secret", "another secret"), "join", timeout=60)
    for rank in (0, 1):
        assert got[rank].startswith("AuthError") and FLAG in got[rank], (
            f"rank {rank} must fail naming {FLAG}, got: {got[rank]}"
        )
        assert "could not prove" in got[rank], f"rank {rank} must say why: {got[rank]}"


def test_a_rank_without_the_secret_is_refused():
    got = run_pair(("s3cret", None), "join", timeout=60)
    for rank in (0, 1):
        assert got[rank].startswith("AuthError") and "TP ranks [1] run without" in got[rank], (
            f"rank {rank} must name the rank that has no {FLAG}: {got[rank]}"
        )


def test_garbage_step_bytes_are_a_clear_error(traded):
    got, _ = traded
    assert got[1]["garbage"].startswith("WireError: malformed step plan from the TP leader"), (
        f"garbage where a step plan belongs must be a clear error: {got[1]}"
    )


def test_a_pickle_on_the_wire_builds_nothing(traded):
    got, marker = traded
    assert not marker.exists(), "the follower unpickled the leader's bytes: code ran in it"
    assert got[1]["pickle"].startswith("WireError: malformed step plan"), (
        f"a pickle where a step plan belongs must be refused as malformed: {got[1]}"
    )


def test_a_message_sealed_under_another_key_is_refused():
    body = msgspec.msgpack.encode(StepDelta(seq=1))
    sealed = seal(os.urandom(32), body)
    with pytest.raises(WireError, match="bad MAC"):
        unseal(os.urandom(32), sealed, "step plan")
    key = os.urandom(32)
    assert bytes(unseal(key, seal(key, body), "step plan")) == body, "the right key opens it"


def test_a_tampered_sealed_message_is_refused():
    key = os.urandom(32)
    sealed = bytearray(seal(key, msgspec.msgpack.encode(StepDelta(seq=1, tokens=[5]))))
    sealed[-1] ^= 1
    with pytest.raises(WireError, match="bad MAC"):
        unseal(key, bytes(sealed), "step plan")


def test_a_different_type_is_not_accepted_as_a_step():
    other = msgspec.msgpack.encode({"seq": 1, "__class__": "os.system"})
    with pytest.raises(WireError, match="malformed step plan"):
        decode(other, StepDelta, "step plan")


def test_a_proof_from_an_earlier_start_does_not_pass():
    key = b"s3cret"
    old = [os.urandom(32), os.urandom(32)]
    new = [os.urandom(32), os.urandom(32)]
    replayed = [proof(key, new, 0), proof(key, old, 1)]
    with pytest.raises(Exception, match=r"TP ranks \[1\] could not prove"):
        check_proofs(key, new, replayed)
