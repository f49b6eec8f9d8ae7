"""Engine end to end on the tiny model: batched, chunked, cached and retracted runs
must generate exactly what a cache-free one-by-one reference generates."""

from __future__ import annotations

import random
from functools import cache

import pytest
import torch
from engine.harness import Result, assert_idle, collect, drain, greedy_req, make_engine, tiny
from engine.reference import full_logits, greedy_reference
from engine.tiny_model import EOS, VOCAB

from pdcore.engine.io_struct import GenerateReq


def prompts(seed: int, n: int, shared_prefix: int = 20) -> dict[str, list[int]]:
    """``n`` prompts of 3..60 tokens (some beyond one prefill chunk), every third
    one starting with the same ``shared_prefix`` tokens."""
    rng = random.Random(seed)
    shared = [rng.randrange(2, VOCAB) for _ in range(shared_prefix)]
    out = {}
    for i in range(n):
        body = [rng.randrange(2, VOCAB) for _ in range(rng.randrange(3, 60))]
        out[f"r{i}"] = shared + body[:10] if i % 3 == 0 else body
    return out


def references(batch: dict[str, list[int]], max_new_tokens: int) -> dict[str, list[int]]:
    return {
        rid: greedy_reference(tiny().model, p, max_new_tokens, (EOS,)) for rid, p in batch.items()
    }


MAX_NEW = 12
BATCH = prompts(0, 8)


@cache
def expected() -> dict[str, list[int]]:
    """Reference outputs of ``BATCH`` (computed once, inside a test's thread setting)."""
    return references(BATCH, MAX_NEW)


def run_batch(engine, batch, stagger: int = 0) -> dict[str, Result]:
    """Submit ``batch`` (``stagger`` steps apart) and run it to the end."""
    results: dict[str, Result] = {}
    for rid, prompt in batch.items():
        engine.add_request(greedy_req(rid, prompt, MAX_NEW))
        for _ in range(stagger):
            collect(engine.step(), results)
    return drain(engine, results)


def assert_matches_reference(results):
    for rid, want in expected().items():
        res = results[rid]
        assert res.tokens == want, rid
        reason = "stop" if want[-1] == EOS else "length"
        assert res.final.finish_reason["type"] == reason
        assert res.final.prompt_tokens == len(BATCH[rid])


def test_concurrent_chunked_and_shared_requests_match_reference():
    engine = make_engine(chunked_prefill_size=16, max_prefill_tokens=40)
    assert max(map(len, BATCH.values())) > 16, "some prompts need several chunks"
    results = run_batch(engine, BATCH, stagger=1)
    assert_matches_reference(results)
    assert max(r.final.cached_tokens for r in results.values()) >= 16, "prefix was reused"
    assert engine.scheduler.num_retractions == 0
    assert_idle(engine)
    # The same prompts again: served largely from the prefix cache, same tokens.
    again = run_batch(engine, BATCH)
    assert_matches_reference(again)
    assert all(r.final.cached_tokens > 0 for rid, r in again.items() if len(BATCH[rid]) > 4)
    assert_idle(engine)


def test_retraction_under_a_tiny_kv_budget_keeps_outputs_identical():
    # 24 pages of 4 tokens: not even two of the longest sequences fit at once.
    engine = make_engine(max_total_tokens=96, chunked_prefill_size=16, max_prefill_tokens=64)
    results = run_batch(engine, BATCH)
    assert engine.scheduler.num_retractions > 0
    assert_matches_reference(results)
    for res in results.values():
        assert res.outputs == len(res.tokens) or res.final.token_ids == [], "no token re-sent"
    assert_idle(engine)


def test_abort_waiting_and_running_requests_frees_their_pages():
    engine = make_engine(max_running_requests=1)
    engine.add_request(greedy_req("run", BATCH["r1"], 50))
    engine.add_request(greedy_req("wait", BATCH["r2"], 50))
    results = {}
    collect(engine.step(), results)
    assert [r.rid for r in engine.scheduler.running] == ["run"]
    usage = engine.kv_usage()
    assert usage.used + usage.locked > 0
    engine.abort("wait")
    engine.abort("run")
    engine.abort("run")  # idempotent
    engine.abort("never-seen")
    usage = engine.kv_usage()
    assert usage.used == 0 and usage.locked == 0
    assert usage.free + usage.evictable == usage.total
    drain(engine, results)
    assert results["wait"].final.finish_reason["type"] == "abort"
    assert results["wait"].tokens == []
    assert results["run"].final.finish_reason["type"] == "abort"
    assert_idle(engine)


def test_soak_200_mixed_requests_with_aborts_leaks_nothing():
    rng = random.Random(7)
    engine = make_engine(max_total_tokens=120, max_running_requests=12, max_prefill_tokens=48)
    results: dict[str, Result] = {}
    live: list[str] = []
    for i in range(200):
        rid = f"s{i}"
        prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randrange(1, 40))]
        if rng.random() < 0.3:
            prompt = [7, 8, 9, 10, 11, 12, 13, 14, *prompt]
        sampling = {
            "max_new_tokens": rng.randrange(0, 16),
            "temperature": rng.choice([0, 0.7, 1.3]),
        }
        if rng.random() < 0.3:
            sampling.update(seed=i, top_p=0.9, top_k=20, repetition_penalty=1.2)
        engine.add_request(GenerateReq(rid, prompt, sampling, return_logprob=rng.random() < 0.5))
        live.append(rid)
        if rng.random() < 0.15:
            engine.abort(live.pop(rng.randrange(len(live))))
        for _ in range(rng.randrange(0, 3)):
            collect(engine.step(), results)
            engine.kv_usage().check()
    drain(engine, results)
    assert engine.scheduler.num_retractions > 0
    assert len(results) == 200
    for rid, res in results.items():
        assert not res.errors, rid
        final = res.final
        assert final.finish_reason["type"] in ("stop", "length", "abort")
        if res.logprobs:
            assert len(res.logprobs) == len(res.tokens)
    assert_idle(engine)
    assert engine.flush_cache()
    assert engine.kv_usage().free == engine.kv_usage().total


def test_prompt_larger_than_the_pool_fails_cleanly():
    engine = make_engine(max_total_tokens=64)
    engine.add_request(greedy_req("big", list(range(2, 70))))
    engine.add_request(greedy_req("ctx", [3] * 600))
    engine.add_request(greedy_req("ok", [5, 6, 7], 3))
    results = drain(engine)
    assert "KV cache" in results["big"].errors[0].message
    assert "context length" in results["ctx"].errors[0].message
    assert results["big"].errors[0].status == 400
    assert len(results["ok"].tokens) == 3
    assert_idle(engine)


@pytest.mark.parametrize(
    ("sampling", "ids", "fragment"),
    [
        ({"temperature": -1}, [5], "temperature"),
        ({"max_new_tokens": 3, "stop_token_ids": [VOCAB]}, [5], "stop_token_ids"),
        ({}, [], "input_ids"),
        ({}, [VOCAB], "input_ids"),
        ({"n": 2}, [5], "n must be 1"),
    ],
)
def test_invalid_requests_become_error_outputs(sampling, ids, fragment):
    engine = make_engine()
    engine.add_request(GenerateReq("bad", ids, sampling))
    results = drain(engine)
    assert fragment in results["bad"].errors[0].message
    assert_idle(engine)


def test_duplicate_rid_is_refused_while_in_flight():
    engine = make_engine()
    engine.add_request(greedy_req("dup", [5, 6, 7]))
    engine.add_request(greedy_req("dup", [5, 6, 7]))
    results = drain(engine)
    assert "already in flight" in results["dup"].errors[0].message
    assert len(results["dup"].tokens) == 12


def test_stop_token_eos_min_new_tokens_and_zero_max_new_tokens():
    prompt = BATCH["r1"]
    free_run = greedy_reference(tiny().model, prompt, 8, ignore_eos=True)
    stop = free_run[2]
    engine = make_engine()
    engine.add_request(greedy_req("stop", prompt, 8, stop_token_ids=[stop]))
    engine.add_request(greedy_req("zero", prompt, 0))
    engine.add_request(greedy_req("ctx", [5] * 500, 100))
    results = drain(engine)
    first = free_run.index(stop) + 1
    assert results["stop"].tokens == free_run[:first]
    assert results["stop"].final.finish_reason == {"type": "stop", "matched": stop, "message": ""}
    assert results["zero"].tokens == [] and results["zero"].final.finish_reason["type"] == "length"
    assert len(results["ctx"].tokens) == 512 - 500, "stops at the context length"
    assert_idle(engine)
    # EOS (a token this prompt produces, declared EOS): min_new_tokens masks it until then.
    eos = free_run[3]
    k = free_run.index(eos) + 1
    engine = make_engine(eos_token_ids=[eos])
    engine.add_request(greedy_req("eos", prompt, 8))
    engine.add_request(greedy_req("min", prompt, 8, min_new_tokens=k))
    engine.add_request(greedy_req("ign", prompt, 8, ignore_eos=True))
    results = drain(engine)
    assert results["eos"].tokens == free_run[:k]
    assert results["eos"].final.finish_reason["matched"] == eos
    assert eos not in results["min"].tokens[:k] and len(results["min"].tokens) > k
    assert results["ign"].tokens == free_run
    assert_idle(engine)


def test_logprobs_and_top_logprobs_stream_with_tokens():
    prompt = BATCH["r4"]
    engine = make_engine()
    engine.add_request(GenerateReq("lp", prompt, {"temperature": 0, "max_new_tokens": 4}, True, 3))
    outs = []
    while engine.has_work():
        outs.extend(engine.step())
    tokens = [t for o in outs for t in o.token_ids]
    logprobs = [v for o in outs for v in o.logprobs]
    tops = [t for o in outs for t in o.top_logprobs]
    assert len(logprobs) == len(tops) == len(tokens) == 4
    raw = torch.log_softmax(full_logits(tiny().model, prompt), -1)
    assert logprobs[0] == pytest.approx(raw[tokens[0]].item(), abs=1e-6)
    assert [int(t) for t, _ in tops[0]] == raw.topk(3).indices.tolist()


def test_seeded_sampling_is_reproducible_whatever_runs_alongside():
    sampling = {"temperature": 1.0, "max_new_tokens": 10, "seed": 1234}
    alone = make_engine()
    alone.add_request(GenerateReq("x", BATCH["r5"], sampling))
    expected = drain(alone)["x"].tokens
    crowded = make_engine(max_total_tokens=96)
    for rid, prompt in BATCH.items():
        crowded.add_request(GenerateReq(rid, prompt, {"temperature": 1.0, "max_new_tokens": 10}))
    crowded.add_request(GenerateReq("x", BATCH["r5"], sampling))
    assert drain(crowded)["x"].tokens == expected


def test_stats_and_flush_cache():
    engine = make_engine(max_total_tokens=128)
    engine.add_request(greedy_req("a", BATCH["r0"], 20))
    engine.step()
    stats = engine.stats(token=5)
    assert stats.token == 5 and stats.num_running == 1 and stats.page_size == 4
    assert stats.total_pages == 32
    assert stats.total_pages == stats.free_pages + stats.used_pages + stats.cached_pages
    assert not engine.flush_cache(), "refused while a request runs"
    drain(engine)
    stats = engine.stats()
    assert stats.cached_pages > 0 and stats.used_pages == 0
    assert engine.flush_cache()
    assert engine.stats().free_pages == 32


def test_default_wiring_through_the_registry_and_free_memory():
    """No attention factory, device or token budget given: the registry picks the
    cpu platform and torch attention, and the pool is sized from free memory."""
    from pdcore.config import ServerArgs
    from pdcore.engine.engine import Engine
    from pdcore.platform import CpuPlatform

    loaded = tiny()
    page_bytes = 2 * 2 * 4 * 2 * 16 * 8  # K+V, layers, page, kv heads, head dim, float64
    fraction = 200 * page_bytes / CpuPlatform().memory_info().free_bytes
    args = ServerArgs(device="cpu", page_size=4, mem_fraction_static=fraction)
    engine = Engine(loaded.model, loaded.config, args)
    assert engine.attention_name == "torch" and engine.device.type == "cpu"
    assert 100 < engine.pool.allocator.capacity < 300
    engine.add_request(greedy_req("a", BATCH["r1"], 5))
    assert drain(engine)["a"].tokens == expected()["r1"][:5]


def test_fail_all_after_a_step_error_releases_everything_and_keeps_serving():
    engine = make_engine(max_running_requests=2)
    for rid in ("r1", "r2", "r3"):
        engine.add_request(greedy_req(rid, BATCH[rid], 8))
    engine.step()
    engine.add_request(greedy_req("bad", [], 8))  # its error is queued, not yet stepped out
    real_forward = engine.runner.forward

    def broken(batch):
        raise RuntimeError("device lost")

    engine.runner.forward = broken
    with pytest.raises(RuntimeError):
        engine.step()
    outs = engine.fail_all("internal engine error: device lost")
    results: dict[str, Result] = {}
    collect(outs, results)
    assert {rid for rid, r in results.items() if r.errors} == {"r1", "r2", "r3", "bad"}
    assert all(r.errors[0].status == 500 for rid, r in results.items() if rid != "bad")
    assert_idle(engine)
    engine.runner.forward = real_forward
    engine.add_request(greedy_req("after", BATCH["r1"], 8))
    assert drain(engine)["after"].tokens == expected()["r1"][:8]
