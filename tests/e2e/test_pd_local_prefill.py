"""Conditional disaggregation through real servers (Mooncake TCP on 127.0.0.1).

A decode server started with ``--disaggregation-local-prefill-threshold`` answers a
short prompt itself, token for token as a null-mode server does, and prefill
answers its half with a 200 and frees the room, whichever half arrives first.
Longer prompts still go through PD, and a router in front gets 200s throughout.

The null-mode reference is the server's own engine (same flags, built by the engine
process's builder) run in this process: one server process fewer to start on CI.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from e2e.null_engine import NullEngine
from e2e.pd_helpers import (
    MAX_NEW,
    assert_idle,
    assert_same_greedy,
    gen_body,
    pd_generate,
    room,
    start_decode,
)
from e2e.server_process import ServerProcess, free_port
from router.cluster import prefill_args, start_parallel
from router.router_process import RouterProcess

from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST

pytestmark = pytest.mark.timeout(240)

THRESHOLD = 80
SHORT = 70  # more than one chunk: decode's local prefill is chunked too
LONG = 120  # over the threshold: through PD
FAST = ("--skip-server-warmup",)
LOCAL_PREFILL = ("--disaggregation-local-prefill-threshold", str(THRESHOLD))


@pytest.fixture(scope="module")
def servers(qwen3_path):
    """The null-mode reference, prefill, decode (with the threshold) and a PD router."""
    bootstrap = free_port()
    null, prefill, decode = start_parallel(
        lambda: NullEngine(qwen3_path),
        lambda: ServerProcess(*prefill_args(qwen3_path, bootstrap), *FAST),
        lambda: start_decode(qwen3_path, "mooncake", *FAST, *LOCAL_PREFILL),
    )
    router = None
    try:
        router = RouterProcess(
            "--pd-disaggregation", "--prefill", prefill.url, str(bootstrap), "--decode", decode.url
        )
        yield null, prefill, decode, router, bootstrap
    finally:
        procs = [p for p in (router, decode, prefill) if p is not None]
        start_parallel(*(p.stop for p in procs))


def ids(n: int, start: int) -> list[int]:
    return list(range(start, start + n))


def pd_body(servers, prompt: list[int]) -> dict:
    port = servers[4]
    return gen_body(prompt, bootstrap_host="127.0.0.1", bootstrap_port=port, bootstrap_room=room())


def through_pd(servers, prompt: list[int]) -> tuple[int, int, dict]:
    """Both halves at once, as the router sends them: (prefill status, decode status, JSON)."""
    _, prefill, decode, _, _ = servers
    return asyncio.run(pd_generate(prefill, decode, [pd_body(servers, prompt)]))[0]


def assert_prefill_dropped_it(prefill, response) -> None:
    """A 200 abort marked pd_local_prefill; no page, room or pending request left."""
    assert response.status_code == 200, response.text
    meta = response.json()["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and meta["pd_local_prefill"] is True, meta
    assert response.json()["output_ids"] == []
    assert_idle(prefill)
    stats = prefill.get("/get_server_info").json()["disaggregation"]
    assert stats["pending_requests"] == 0 and stats["bootstrap_queue"] == 0, stats


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("first", ["decode", "prefill"])
def test_short_prompt_is_prefilled_by_decode_like_null_mode(servers, first):
    """``first``: whose half arrives first; decode's drop message then reaches prefill
    before (decode) or after (prefill) prefill opened the room."""
    null, prefill, decode, _, _ = servers
    prompt = ids(SHORT, 1000 if first == "decode" else 2000)
    body = pd_body(servers, prompt)
    got = {}
    if first == "decode":
        got["decode"] = decode.post("/generate", body)
        got["prefill"] = prefill.post("/generate", body)
    else:
        half = threading.Thread(target=lambda: got.update(prefill=prefill.post("/generate", body)))
        half.start()
        stats = lambda: prefill.get("/get_server_info").json()["disaggregation"]  # noqa: E731
        wait_for(lambda: stats()["bootstrap_queue"] == 1)
        got["decode"] = decode.post("/generate", body)
        half.join(60)
    assert got["decode"].status_code == 200, got["decode"].text
    out = got["decode"].json()
    assert out["meta_info"]["pd_local_prefill"] is True
    assert len(out["output_ids"]) == MAX_NEW
    assert_same_greedy(out, null.generate(prompt), f"local prefill ({first} first)")
    assert_prefill_dropped_it(prefill, got["prefill"])
    assert_idle(decode)


def test_long_prompt_still_goes_through_pd(servers):
    null, prefill, decode, _, _ = servers
    prompt = ids(LONG, 3000)
    p_status, d_status, out = through_pd(servers, prompt)
    assert (p_status, d_status) == (200, 200), out
    assert "pd_local_prefill" not in out["meta_info"]
    assert_same_greedy(out, null.generate(prompt), "PD")
    assert_idle(prefill, decode)


def test_decodes_prefix_cache_counts_as_prefilled(servers):
    """A follow-up turn: the first turn's pages stay in decode's prefix cache, so only
    the new tokens are left to prefill and decode serves the longer prompt itself."""
    null, prefill, decode, _, _ = servers
    first = ids(LONG, 4000)
    assert "pd_local_prefill" not in through_pd(servers, first)[2]["meta_info"]
    follow_up = first + ids(12, 4500)  # 132 tokens, 112 of them (7 pages) cached on decode
    p_status, d_status, out = through_pd(servers, follow_up)
    assert (p_status, d_status) == (200, 200) and out["meta_info"]["pd_local_prefill"] is True
    assert_same_greedy(out, null.generate(follow_up), "cached prefix + local prefill")
    assert_idle(prefill, decode)


def test_router_answers_a_short_request_with_decodes_logprobs(servers):
    """Prefill's 200 must not make the router abort decode, and the router keeps
    decode's answer whole: prefill computed nothing for this prompt."""
    null, prefill, decode, router, _ = servers
    prompt = ids(SHORT, 5000)
    got = router.post("/generate", {**gen_body(prompt), "logprob_start_len": 0})
    assert got.status_code == 200, got.text
    want = null.generate(prompt)
    meta = got.json()["meta_info"]
    assert meta["pd_local_prefill"] is True and meta["finish_reason"]["type"] == "length"
    assert_same_greedy(got.json(), want, "through the router")
    # Decode prefilled this prompt itself: its own input logprobs stand (prefill has none).
    ref_in = null.generate(prompt, logprob_start_len=0)["meta_info"]["input_token_logprobs"]
    got_in = meta["input_token_logprobs"]
    assert [t for _, t, _ in got_in] == prompt, "each prompt token once, from decode"
    assert got_in[0][0] is None
    assert max(abs(a[0] - b[0]) for a, b in zip(got_in[1:], ref_in[1:], strict=True)) < 1e-4
    lp, ref = meta["output_token_logprobs"], want["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lp] == [t for _, t, _ in ref]
    assert max(abs(a[0] - b[0]) for a, b in zip(lp, ref, strict=True)) < 1e-4
    assert_idle(prefill, decode)


def test_local_prefill_is_counted(servers):
    _, prefill, decode, _, _ = servers
    through_pd(servers, ids(SHORT, 6000))
    info = decode.get("/get_server_info").json()["disaggregation"]
    assert info["local_prefill_reqs"] >= 1, info
    assert counter(decode, "sglang:num_decode_local_prefill_reqs_total") >= 1
    assert counter(prefill, "sglang:num_prefill_served_by_decode_reqs_total") >= 1
    rooms = prefill.get("/get_server_info").json()["disaggregation"]
    assert rooms["rooms_served_by_decode"] >= 1 and rooms["rooms_failed"] == 0, (
        f"a room decode served itself is not a failed transfer: {rooms}"
    )


def counter(server, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", server.get("/metrics").text, re.M)
    assert m, f"{server.url} /metrics lacks {name}"
    return float(m[1])


def fake_host_body(prompt: list[int]) -> dict:
    """What a client could send straight to decode: SGLang's fake bootstrap host."""
    return gen_body(
        prompt, bootstrap_host=FAKE_BOOTSTRAP_HOST, bootstrap_port=1, bootstrap_room=room()
    )


def test_client_fake_host_cannot_poison_a_routed_follow_up(servers):
    """Decode must not cache pages nobody wrote under a client's prompt: the follow-up
    through the router would count them as prefilled and answer from them."""
    null, prefill, decode, router, _ = servers
    prompt = ids(LONG, 7000)
    fake = decode.post("/generate", fake_host_body(prompt))
    follow_up = prompt + ids(12, 7500)  # over the threshold unless decode had the prefix
    got = router.post("/generate", gen_body(follow_up))
    assert got.status_code == 200, got.text
    assert_same_greedy(got.json(), null.generate(follow_up), "routed follow-up of a fake host")
    assert fake.status_code == 400 and "reserved" in fake.text, fake.text
    assert_idle(prefill, decode)


def test_client_fake_host_cannot_poison_decodes_local_prefill(servers):
    null, prefill, decode, _, _ = servers
    prompt = ids(SHORT, 8000)
    fake = decode.post("/generate", fake_host_body(prompt))
    follow_up = prompt + ids(6, 8500)  # within the threshold: decode prefills it
    p_status, d_status, out = through_pd(servers, follow_up)
    assert (p_status, d_status) == (200, 200) and out["meta_info"]["pd_local_prefill"], out
    assert_same_greedy(out, null.generate(follow_up), "local prefill after a fake host")
    assert fake.status_code == 400 and "reserved" in fake.text, fake.text
    assert_idle(prefill, decode)
