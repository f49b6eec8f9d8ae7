"""Building engines on the tiny model and driving them to completion in tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache

from engine.tiny_model import load_tiny

from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.config import ServerArgs
from pdcore.engine.engine import Engine
from pdcore.engine.io_struct import EngineError, GenerateReq, TokenOut


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


def greedy_req(rid: str, prompt: list[int], max_new_tokens: int = 12, **sampling) -> GenerateReq:
    return GenerateReq(
        rid, prompt, {"temperature": 0.0, "max_new_tokens": max_new_tokens, **sampling}
    )


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
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
