"""HF transformers' decode step time, the peer pdcore is compared with: ``generate()``
as it comes (eager, dynamic cache) and the fastest decode transformers documents (a
static cache with the decode forward compiled, ``mode="reduce-overhead"``: CUDA graphs).

A step is ``(T(new + 1) - T(1)) / new`` from paired ``generate()`` calls of ``1`` and
``new + 1`` tokens; each pair gives one estimate and the median is reported (with
every estimate), as pdcore's own step is the median of its windows."""

from __future__ import annotations

import contextlib
import signal
import statistics
import traceback

import torch
from gpu_references import sync_time


def _generate(hf, ids, n: int) -> None:
    hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def step_estimates(hf, batch: int, prompt_len: int, new: int, pairs: int) -> list[float]:
    """Seconds per decode step, one estimate per (T(1), T(new + 1)) pair."""
    ids = torch.randint(10, 100000, (batch, prompt_len), device="cuda")
    out = []
    for _ in range(pairs):
        (one,) = sync_time(lambda: _generate(hf, ids, 1), 1)
        (many,) = sync_time(lambda: _generate(hf, ids, new + 1), 1)
        out.append((many - one) / new)
    return out


def report(estimates: list[float]) -> dict:
    return {
        "step_ms": 1e3 * statistics.median(estimates),
        "reduced_by": "median",
        "estimates_ms": [1e3 * e for e in estimates],
    }


@torch.inference_mode()
def eager_step(hf, batch: int, prompt_len: int, new: int, pairs: int = 5) -> dict:
    """``generate()`` with transformers' defaults, after two untimed calls."""
    ids = torch.randint(10, 100000, (batch, prompt_len), device="cuda")
    for n in (1, new + 1):
        _generate(hf, ids, n)
    return report(step_estimates(hf, batch, prompt_len, new, pairs))


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise ``TimeoutError`` in this (main) thread after ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"compile warm-up took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_compiled(hf) -> str:
    """Switch ``hf`` to a static cache with a compiled decode forward; the method used.

    transformers with ``CompileConfig`` compiles the decode forward inside
    ``generate()`` itself once the cache is static; older ones need the forward
    compiled by hand (their docs' recipe). Either way: ``mode="reduce-overhead"``,
    ``fullgraph=True``."""
    import torch._dynamo

    hf.generation_config.cache_implementation = "static"
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, 64)  # one graph per batch size and cache length
    try:
        from transformers import CompileConfig
    except ImportError:
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
        return "static cache, model.forward = torch.compile(reduce-overhead, fullgraph)"
    hf.generation_config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
    return "static cache, generate()'s own compile (CompileConfig reduce-overhead, fullgraph)"


@torch.inference_mode()
def compiled_step(
    hf, batch: int, prompt_len: int, new: int, pairs: int = 5, compile_budget_s: int = 900
) -> dict:
    """Like ``eager_step`` on a model ``make_compiled`` switched; the untimed calls
    compile every shape the timed ones use, within ``compile_budget_s``. A failed or
    over-long compile is returned as ``{"error": ...}`` rather than raised."""
    ids = torch.randint(10, 100000, (batch, prompt_len), device="cuda")
    try:
        with time_limit(compile_budget_s):
            for n in (1, new + 1, 1, new + 1):  # the second round replays, no compiling
                _generate(hf, ids, n)
        return report(step_estimates(hf, batch, prompt_len, new, pairs))
    except Exception as e:  # a compile failure must not lose the rest of the run
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
