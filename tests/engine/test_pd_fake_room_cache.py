"""A fake room's pages never enter the prefix cache, on either side: on decode they
hold KV nobody wrote (stale pages of earlier requests), which a later request
sharing the prompt would otherwise reuse and answer wrongly from."""

from __future__ import annotations

import msgspec
import pytest
from engine.harness import assert_idle, drain, greedy_req, make_engine
from engine.test_pd_local_prefill import DropRecorder

from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST

THRESHOLD = 24
PROMPT = list(range(5, 21))  # 16 tokens: four full pages of 4
FOLLOW_UP = PROMPT + list(range(40, 46))  # 22 tokens, within decode's local threshold


def fake_req(rid: str, prompt: list[int], room: int):
    base = greedy_req(rid, prompt, max_new_tokens=6)
    return msgspec.structs.replace(
        base, bootstrap_host=FAKE_BOOTSTRAP_HOST, bootstrap_port=1, bootstrap_room=room
    )


def run_one(engine, req):
    engine.add_request(req)
    result = drain(engine)[req.rid]
    assert not result.errors, result.errors
    return result


def test_fake_decode_room_leaves_nothing_in_the_prefix_cache():
    engine = make_engine(disaggregation_mode="decode", disaggregation_transfer_backend="fake")
    assert len(run_one(engine, fake_req("f", PROMPT, 3)).tokens) == 6
    assert engine.cache.cached_pages == 0, "unwritten pages were cached under the prompt"
    assert_idle(engine)
    assert engine.kv_usage().free == engine.kv_usage().total, "every page back in the pool"


def test_fake_prefill_room_leaves_nothing_in_the_prefix_cache():
    engine = make_engine(disaggregation_mode="prefill", disaggregation_transfer_backend="fake")
    assert len(run_one(engine, fake_req("f", PROMPT, 4)).tokens) == 1
    assert engine.cache.cached_pages == 0, "a fake room's pages are never shared"
    assert_idle(engine)


def test_local_prefill_after_a_fake_room_answers_like_null_mode():
    """The fake room's prompt is the follow-up's prefix: decode must compute it."""
    want = run_one(make_engine(), greedy_req("b", FOLLOW_UP, max_new_tokens=6))
    engine = make_engine(disaggregation_mode="decode", disaggregation_transfer_backend="fake")
    engine.pd.manager = DropRecorder()  # real rooms now: local prefill applies
    engine.pd.local_prefill_threshold = THRESHOLD
    run_one(engine, fake_req("f", PROMPT, 5))
    follow_up = msgspec.structs.replace(
        greedy_req("b", FOLLOW_UP, max_new_tokens=6),
        bootstrap_host="10.0.0.1",
        bootstrap_port=8998,
        bootstrap_room=6,
    )
    got = run_one(engine, follow_up)
    assert got.final.pd_local_prefill, "the follow-up should be prefilled on decode"
    assert got.tokens == want.tokens, "decode reused the fake room's unwritten pages"
    assert_idle(engine)


@pytest.fixture
def mooncake_decode():
    """A decode engine on a real transfer backend (Mooncake over TCP, no peer needed)."""
    engine = make_engine(disaggregation_mode="decode", disaggregation_transfer_backend="mooncake")
    yield engine
    engine.close()


def test_real_backend_engine_refuses_a_client_fake_host(mooncake_decode):
    """Behind the front end's own check: the engine never opens a fake room for a client."""
    mooncake_decode.add_request(fake_req("f", PROMPT, 7))
    (error,) = drain(mooncake_decode)["f"].errors
    assert error.status == 400 and "reserved" in error.message, error
    assert_idle(mooncake_decode)


def test_probe_flag_takes_the_fake_path_on_a_real_backend_and_caches_nothing(mooncake_decode):
    probe = msgspec.structs.replace(fake_req("probe", PROMPT, 8), fake_transfer=True)
    assert len(run_one(mooncake_decode, probe).tokens) == 6
    assert mooncake_decode.cache.cached_pages == 0, "the probe's unwritten pages were cached"
    assert_idle(mooncake_decode)
