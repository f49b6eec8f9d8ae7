"""PD queue timings, KV transfer sizes and failures, cumulated in the engine process.

Why here and cumulative: the HTTP front end sees the engine only through stats
snapshots (one per ``/metrics`` scrape or ``/get_server_info``), so per-request
samples sent over would be lost or double-counted between scrapes; bucket counts
kept here are exact whatever the scrape interval. The front end renders them as
Prometheus histograms (``pdcore.server.pd_metrics``).

Stages (SGLang's names for ``sglang:per_stage_req_latency_seconds``), per side:

- ``prefill_bootstrap``: request arrived until decode's page ids did (bootstrap queue).
- ``prefill_transfer_kv_cache``: prefill finished until the last chunk landed on decode.
- ``decode_bootstrap``: request arrived until its pages were preallocated and sent
  to prefill (handshake plus waiting for free pages: the prealloc queue).
- ``decode_transferred``: pages sent until all KV and the first token arrived (the
  transfer queue: what ``SGLANG_DISAGGREGATION_WAITING_TIMEOUT`` bounds).

Only real rooms count; warm-up and health-check rooms (``fake``) are never opened here.
``local_prefill`` counts requests decode prefilled itself
(``--disaggregation-local-prefill-threshold``) and, on prefill, the rooms it dropped
because of that.
All methods run on the engine thread.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque

STAGES = {
    "prefill": ("prefill_bootstrap", "prefill_transfer_kv_cache"),
    "decode": ("decode_bootstrap", "decode_transferred"),
}
# 1 ms .. ~17 min, doubling: queue waits span both ends.
SECONDS_BUCKETS = tuple(round(0.001 * 2**k, 6) for k in range(21))
SPEED_BUCKETS_GB_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 200, 400)
RECENT_S = 10.0  # window of the "recent" means (SGLang's kv_transfer_* gauges)


class Histogram:
    """Prometheus-style buckets (``le`` upper bounds, plus +Inf), sum and count."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict:
        """Per-bucket (not cumulative) counts; the last one is +Inf."""
        return {
            "buckets": list(self.buckets),
            "counts": list(self.counts),
            "sum": self.sum,
            "count": self.count,
        }


class Recent:
    """Samples of the last ``window_s`` seconds, for "recent mean" gauges."""

    def __init__(self, window_s: float = RECENT_S, clock=time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.samples: deque[tuple[float, tuple]] = deque()

    def add(self, *values: float) -> None:
        self.samples.append((self.clock(), values))

    def values(self) -> list[tuple]:
        horizon = self.clock() - self.window_s
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()
        return [v for _, v in self.samples]


class PDMetrics:
    def __init__(self, role: str, clock=time.monotonic):
        if role not in STAGES:
            raise ValueError(f"role must be 'prefill' or 'decode', got {role!r}")
        self.role = role
        self.clock = clock
        self.stages = {name: Histogram(SECONDS_BUCKETS) for name in STAGES[role]}
        self.transfer_latency = Histogram(SECONDS_BUCKETS)
        self.transfer_speed = Histogram(SPEED_BUCKETS_GB_S)
        self.failed = {"bootstrap": 0, "transfer": 0}
        self.local_prefill = 0
        self._since: dict[str, float] = {}  # rid -> start of its current stage
        self._recent_bootstrap = Recent(clock=clock)
        self._recent_transfers = Recent(clock=clock)

    # ---- request lifecycle (called by the PD queues) ---------------------------

    def open(self, rid: str) -> None:
        """A real room opened: its first stage starts now."""
        self._since[rid] = self.clock()

    def stage(self, rid: str, name: str) -> None:
        """``rid`` finished stage ``name``; its next stage (if any) starts now."""
        start = self._since.get(rid)
        if start is None:
            return
        now = self.clock()
        self.stages[name].observe(now - start)
        if name.endswith("_bootstrap"):
            self._recent_bootstrap.add(now - start)
        self._since[rid] = now

    def restart(self, rid: str) -> None:
        """A stage starts now without the time before it counting as one."""
        if rid in self._since:
            self._since[rid] = self.clock()

    def fail(self, rid: str, kind: str) -> None:
        """The room failed (``kind``: bootstrap or transfer); client aborts are not failures."""
        if self._since.pop(rid, None) is not None:
            self.failed[kind] += 1

    def close(self, rid: str) -> None:
        self._since.pop(rid, None)

    # ---- KV transfers (prefill: records from the KV manager) -------------------

    def transfers(self, records) -> None:
        """Per-room records: ``started``/``ended`` (monotonic), ``nbytes``, ``busy_s``."""
        for r in records:
            latency = max(r.ended - r.started, 0.0)
            speed = r.nbytes / r.busy_s / 1e9 if r.busy_s > 0 else 0.0
            self.transfer_latency.observe(latency)
            self.transfer_speed.observe(speed)
            self._recent_transfers.add(latency, r.nbytes, r.busy_s)

    # ---- views -----------------------------------------------------------------

    def recent(self) -> dict:
        """Means over the last ``RECENT_S`` seconds (0 when nothing happened)."""
        boots = [v[0] for v in self._recent_bootstrap.values()]
        moves = self._recent_transfers.values()
        nbytes = sum(v[1] for v in moves)
        busy = sum(v[2] for v in moves)
        return {
            "bootstrap_ms": 1e3 * sum(boots) / len(boots) if boots else 0.0,
            "latency_ms": 1e3 * sum(v[0] for v in moves) / len(moves) if moves else 0.0,
            "speed_gb_s": nbytes / busy / 1e9 if busy > 0 else 0.0,
            "total_mb": nbytes / 1e6 / len(moves) if moves else 0.0,
        }

    def summary(self) -> dict:
        """A few scalars for ``/get_server_info`` (the router's dashboard reads them)."""
        recent = self.recent()
        return {
            "bootstrap_failed": self.failed["bootstrap"],
            "transfer_failed": self.failed["transfer"],
            "local_prefill_reqs": self.local_prefill,
            "recent_transfer_speed_gb_s": round(recent["speed_gb_s"], 6),
            "recent_transfer_latency_ms": round(recent["latency_ms"], 3),
        }

    def snapshot(self) -> dict:
        """Everything the front end renders (msgpack-able)."""
        out = {
            "role": self.role,
            "stages": {name: h.snapshot() for name, h in self.stages.items()},
            "failed": dict(self.failed),
            "local_prefill": self.local_prefill,
            "recent": self.recent(),
        }
        if self.role == "prefill":  # the sender times the writes; decode only sees them land
            out["transfer_latency_seconds"] = self.transfer_latency.snapshot()
            out["transfer_speed_gb_s"] = self.transfer_speed.snapshot()
        return out
