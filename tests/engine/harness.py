"""Building engines on the tiny model and driving them to completion in tests."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from functools import cache

from engine.tiny_model import load_tiny

from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.config import ServerArgs
from pdcore.engine.engine import Engine
from pdcore.engine.io_struct import EngineError, GenerateReq, TokenOut
from pdcore.kvcache.allocator import PageAllocator
from pdcore.kvcache.radix_cache import RadixCache
from pdcore.scheduler.scheduler import Scheduler, SchedulerConfig


@cache
def tiny():
    return load_tiny()


def make_engine(eos_token_ids: list[int] | None = None, **server_args) -> Engine:
    loaded = tiny()
    config = loaded.config
    if eos_token_ids is not None:
        config = dataclasses.replace(config, eos_token_ids=eos_token_ids)
    defaults = dict(max_total_tokens=1024, page_size=4, chunked_prefill_size=16)
    args = ServerArgs(**{**defaults, **server_args})
    return Engine(loaded.model, config, args, TorchNativeAttention, "cpu")


def gpu_engine(loaded, attention, graphs: bool, max_bs: int, overlap: bool = True) -> Engine:
    """An engine over ``loaded`` (a model on the GPU) with ``attention``'s kernels;
    decode graphs up to ``max_bs`` rows, overlapped unless ``overlap`` is False."""
    args = ServerArgs(
        max_total_tokens=8192,
        page_size=16,
        chunked_prefill_size=256,
        cuda_graph_max_bs=max_bs,
        disable_cuda_graph=not graphs,
        disable_overlap_schedule=not overlap,
    )
    return Engine(loaded.model, loaded.config, args, attention, "cuda")


def bare_scheduler(pages: int, page_size: int, max_running: int = 8) -> Scheduler:
    """A scheduler over ``pages`` allocatable pages (plus the padding page), no engine."""
    allocator = PageAllocator(pages + 1)
    config = SchedulerConfig(
        page_size=page_size,
        max_running_requests=max_running,
        chunked_prefill_size=-1,
        max_prefill_tokens=4096,
        context_length=4096,
    )
    return Scheduler(config, allocator, RadixCache(page_size, allocator))


def greedy_req(rid: str, prompt: list[int], max_new_tokens: int = 12, **sampling) -> GenerateReq:
    return GenerateReq(
        rid, prompt, {"temperature": 0.0, "max_new_tokens": max_new_tokens, **sampling}
    )


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[list[float]]] = field(default_factory=list)
    finals: list[TokenOut] = field(default_factory=list)
    errors: list[EngineError] = field(default_factory=list)
    outputs: int = 0

    @property
    def final(self) -> TokenOut:
        assert len(self.finals) == 1, f"expected one final output, got {self.finals}"
        return self.finals[0]


def collect(outs, results: dict[str, Result]) -> None:
    for out in outs:
        res = results.setdefault(out.rid, Result())
        if isinstance(out, EngineError):
            res.errors.append(out)
            continue
        assert not res.finals, f"{out.rid}: output after its final one"
        res.outputs += 1
        res.tokens.extend(out.token_ids)
        res.logprobs.extend(out.logprobs)
        res.top_logprobs.extend(out.top_logprobs)
        assert out.completion_tokens == len(res.tokens)
        if out.finish_reason is not None:
            res.finals.append(out)


def drain(engine: Engine, results: dict[str, Result] | None = None, max_steps: int = 10_000):
    """Step until idle, checking the KV accounting invariant after every step."""
    results = {} if results is None else results
    for _ in range(max_steps):
        if not engine.has_work():
            return results
        collect(engine.step(), results)
        engine.kv_usage().check()
    raise AssertionError("engine did not finish")


def assert_idle(engine: Engine) -> None:
    """No request holds anything: every page is free or evictable cache."""
    usage = engine.kv_usage()
    usage.check()
    assert usage.used == 0 and usage.locked == 0, usage
    assert usage.free + usage.evictable == usage.total, usage
    assert engine.cache.audit() == (usage.cached, 0)
    assert not engine.scheduler.running and not engine.scheduler.waiting


def pd_queue_step(sched, queues):
    """One engine step of PD queues over a bare scheduler (every sampled token 7):
    poll the queues, schedule, commit; returns what the poll reported."""
    from pdcore.scheduler.scheduler import Sampled

    reports = queues.poll()
    batch = sched.schedule()
    if batch is not None:
        sampled = [Sampled(7) for s in batch.sample if s]
        queues.after_commit(batch, sched.commit(batch, sampled))
    return reports


def overlap_workload(engine: Engine, waves, stops: dict, abort_rid: str, abort_at: int):
    """Waves of requests joining mid-decode (even ones greedy, with ``stops``' stop
    tokens; odd ones seeded sampling; one asking for logprobs, which cannot overlap),
    ``abort_rid`` aborted after ``abort_at`` steps; every request's outputs, the KV
    accounting checked after every step."""
    results: dict[str, Result] = {}
    steps = 0
    for w, wave in enumerate(waves):
        for i, p in enumerate(wave):
            rid = f"w{w}-{i}"
            params = {"max_new_tokens": 12 + 5 * i, "stop_token_ids": stops.get(rid, [])}
            params |= (
                {"temperature": 0.8, "top_p": 0.9, "seed": 40 + i}
                if i % 2
                else {"temperature": 0.0}
            )
            engine.add_request(GenerateReq(rid, p, params, return_logprob=(w, i) == (1, 2)))
        for _ in range(7):
            collect(engine.step(), results)
            engine.kv_usage().check()
            steps += 1
            if steps == abort_at:
                engine.abort(abort_rid)
    while engine.has_work():
        collect(engine.step(), results)
        engine.kv_usage().check()
    return results


def assert_same_outputs(plain: dict[str, Result], over: dict[str, Result], aborted: str) -> None:
    """Overlap scheduling changes no token and no finish reason; the aborted request may
    have one token less (overlap had not read it back when the abort came)."""
    assert plain.keys() == over.keys()
    for rid, want in plain.items():
        got = over[rid]
        if rid == aborted:
            assert got.final.finish_reason["type"] == "abort", rid
            assert want.tokens[: len(got.tokens)] == got.tokens, rid
            continue
        assert got.tokens == want.tokens, f"{rid}: overlap {got.tokens} vs plain {want.tokens}"
        assert got.final.finish_reason == want.final.finish_reason, rid
        assert len(got.logprobs) == len(want.logprobs), rid
    assert any(r.final.finish_reason["type"] == "stop" for r in over.values()), "no stop hit"


def check_overlap_equals_plain(make, vocab: int, seed: int = 9) -> None:
    """``make(overlap: bool) -> Engine``: run ``overlap_workload`` on an engine without
    and one with overlap scheduling; same tokens and finish reasons, no page leaked,
    and overlap really happened. The stop tokens are ones that come up: each greedy
    request's 9th token in a first run, late enough to come while the batch runs
    overlapped (as the abort of ``w2-1`` after 19 steps), so a step already launched
    holds rows of requests that have finished."""
    rng = random.Random(seed)
    waves = [
        [[rng.randrange(1, vocab) for _ in range(rng.randrange(5, 90))] for _ in range(k)]
        for k in (3, 4, 2)
    ]
    first = overlap_workload(make(False), waves, {}, "", 0)
    stops = {
        rid: [r.tokens[8]]
        for rid, r in first.items()
        if int(rid[-1]) % 2 == 0 and len(r.tokens) > 8
    }
    out = {}
    for overlap in (False, True):
        engine = make(overlap)
        out[overlap] = overlap_workload(engine, waves, stops, "w2-1", abort_at=19)
        assert engine.kv_usage().used == 0, "pages leaked"
        if overlap:
            assert engine.overlapped_steps > 10, "no decode step was overlapped"
            assert engine.overlap_dropped_rows > 0, "no request finished with a step in flight"
        else:
            assert engine.overlapped_steps == 0
    assert_same_outputs(out[False], out[True], aborted="w2-1")
