"""The numbers: latency distributions, throughput, goodput, a throughput timeline.

Definitions follow SGLang's bench_serving: TTFT = first output token's arrival -
send; E2E = last byte - send; TPOT = (E2E - TTFT) / (output tokens - 1), only for
requests with more than one output token; ITL = every gap between tokens;
throughputs divide by the run's wall time. Failed requests count only as failures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pdcore.benchserve.client import RequestResult

PERCENTILES = (50, 90, 99)
TIMELINE_BINS = 40


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def distribution_ms(values_s: Sequence[float]) -> dict:
    """mean/std/min/max and p50/p90/p99 in milliseconds; all None without values."""
    keys = ["count", "mean", "std", "min", *(f"p{q}" for q in PERCENTILES), "max"]
    if not values_s:
        return {k: (0 if k == "count" else None) for k in keys}
    ms = [v * 1000 for v in values_s]
    mean = sum(ms) / len(ms)
    out = {"count": len(ms), "mean": mean}
    out["std"] = math.sqrt(sum((v - mean) ** 2 for v in ms) / len(ms))
    out["min"] = min(ms)
    out.update({f"p{q}": percentile(ms, q) for q in PERCENTILES})
    out["max"] = max(ms)
    return out


def tpot(result: RequestResult) -> float | None:
    """Seconds per output token after the first; None with one token or fewer."""
    if result.output_len <= 1:
        return None
    return (result.latency - result.ttft) / (result.output_len - 1)


def meets_slo(result: RequestResult, slo_ttft_ms: float | None, slo_tpot_ms: float | None):
    """Succeeded within both SLOs (an SLO not given always holds; TPOT holds for a
    one-token answer, which has no time per output token)."""
    if not result.success:
        return False
    if slo_ttft_ms is not None and result.ttft * 1000 > slo_ttft_ms:
        return False
    per_token = tpot(result)
    return slo_tpot_ms is None or per_token is None or per_token * 1000 <= slo_tpot_ms


def summarize(
    results: Sequence[RequestResult],
    duration: float,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict:
    """Counts, token totals, throughputs (per second of ``duration``), goodput."""
    ok = [r for r in results if r.success]
    inputs = sum(r.prompt_len for r in ok)
    outputs = sum(r.output_len for r in ok)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    out = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": inputs,
        "total_output_tokens": outputs,
        "request_throughput": per_s(len(ok)),
        "input_throughput": per_s(inputs),
        "output_throughput": per_s(outputs),
        "total_token_throughput": per_s(inputs + outputs),
        "mean_concurrency": per_s(sum(r.latency for r in ok)),
    }
    if slo_ttft_ms is None and slo_tpot_ms is None:
        out["goodput"] = None
    else:
        good = sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in results)
        out["goodput"] = {
            "slo_ttft_ms": slo_ttft_ms,
            "slo_tpot_ms": slo_tpot_ms,
            "good_requests": good,
            "request_goodput": per_s(good),
        }
    return out


def latencies_ms(results: Sequence[RequestResult]) -> dict:
    """TTFT, TPOT, ITL and E2E distributions over the successful requests."""
    ok = [r for r in results if r.success]
    tpots = [t for t in map(tpot, ok) if t is not None]
    return {
        "ttft": distribution_ms([r.ttft for r in ok]),
        "tpot": distribution_ms(tpots),
        "itl": distribution_ms([gap for r in ok for gap in r.itl]),
        "e2e": distribution_ms([r.latency for r in ok]),
    }


def timeline(results: Sequence[RequestResult], start: float, duration: float) -> dict:
    """Output tokens/s and completed requests/s of the successful requests, in equal
    time bins over the run."""
    width = duration / TIMELINE_BINS if duration > 0 else 1.0
    tokens, done = [0.0] * TIMELINE_BINS, [0] * TIMELINE_BINS

    def slot(t: float) -> int:
        return min(max(int((t - start) / width), 0), TIMELINE_BINS - 1)

    for r in results:
        if r.success:
            for arrived, count in r.chunks:
                tokens[slot(arrived)] += count
            done[slot(r.start + r.latency)] += 1
    return {
        "bin_s": width,
        "t_s": [i * width for i in range(TIMELINE_BINS)],
        "output_tokens_per_s": [x / width for x in tokens],
        "completed_requests_per_s": [x / width for x in done],
    }


def errors(results: Sequence[RequestResult]) -> list[dict]:
    """Distinct error messages of failed requests, most frequent first."""
    counts: dict[str, int] = {}
    for r in results:
        if not r.success:
            counts[r.error] = counts.get(r.error, 0) + 1
    return [{"error": e, "count": n} for e, n in sorted(counts.items(), key=lambda x: -x[1])]
