"""One ``EngineStats`` for the whole server out of every DP leader's.

Under DP attention each DP group is an engine with its own requests and KV
pool, so the server's load and pages are sums over them; ``/get_server_info``,
``/metrics`` and the router read the sum as they read a single engine's.
Counters add up; PD histograms add bucket by bucket; "recent" means average.
"""

from __future__ import annotations

from pdcore.engine.io_struct import EngineStats

SUMMED = ("num_running", "num_waiting", "total_pages", "free_pages", "used_pages", "cached_pages")


def merge_stats(parts: list[EngineStats]) -> EngineStats:
    """``parts``: one reply per DP leader (DP rank order); ``parts[0]`` when alone."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    sums = {name: sum(getattr(p, name) for p in parts) for name in SUMMED}
    return EngineStats(
        token=first.token,
        page_size=first.page_size,
        flushed=all(p.flushed for p in parts),
        disaggregation=_merge_dicts([p.disaggregation for p in parts]),
        pd_metrics=_merge_dicts([p.pd_metrics for p in parts]),
        **sums,
    )


def _merge_dicts(dicts: list[dict | None], mean: bool = False) -> dict | None:
    if any(d is None for d in dicts):
        return None
    out = {}
    for key, value in dicts[0].items():
        values = [d.get(key, value) for d in dicts]
        out[key] = _merge(key, values, mean or key == "recent")
    return out


def _merge(key: str, values: list, mean: bool):
    first = values[0]
    if isinstance(first, dict):
        return _merge_dicts(values, mean)
    if isinstance(first, bool) or not isinstance(first, int | float | list):
        return first  # names and modes: the same on every leader
    if isinstance(first, list):
        if key == "buckets" or not all(
            isinstance(v, list) and len(v) == len(first) for v in values
        ):
            return first
        return [sum(col) for col in zip(*values, strict=True)]
    total = sum(values)
    return total / len(values) if mean else total
