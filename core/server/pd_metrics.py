"""PD disaggregation metrics of one server, rendered from the engine's last stats.

The engine keeps the cumulative counts (``pdcore.scheduler.pd_metrics``); this
collector turns its latest ``EngineStats`` (refreshed before every ``/metrics``
scrape) into Prometheus families, so nothing is sampled or lost here. Names
follow SGLang's where it has them (queue gauges, ``kv_transfer_*`` recent gauges,
failure counters, ``per_stage_req_latency_seconds``); the per-request transfer
histograms and byte counter are pdcore's. Nothing is exported by a null-mode server.
"""

from __future__ import annotations

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pdcore.engine.io_struct import EngineStats

# (metric, help, side, key in EngineStats.disaggregation); side None: both.
QUEUE_GAUGES = (
    ("num_prefill_prealloc_queue_reqs", "Requests waiting for decode's page ids (bootstrap queue).",
     "prefill", "bootstrap_queue"),
    ("num_prefill_inflight_queue_reqs", "Prefilled requests whose KV is still being sent.",
     "prefill", "transfer_queue"),
    ("num_decode_prealloc_queue_reqs", "Requests waiting for a handshake or free KV pages.",
     "decode", "prealloc_queue"),
    ("num_decode_transfer_queue_reqs", "Requests with preallocated pages waiting for their KV.",
     "decode", "transfer_queue"),
    ("kv_transfer_pages_in_flight", "KV pages held by requests in a PD queue (being sent or "
     "received).", None, "held_pages"),
    ("kv_transfer_inflight_writes", "Transfer-engine writes not finished yet.",
     None, "inflight_transfers"),
    ("kv_transfer_active_rooms", "PD rooms (requests) open in the KV manager.",
     None, "active_rooms"),
)  # fmt: skip
# Means over the engine's last few seconds (SGLang's gauges); transfers are timed by
# the sender, so only prefill has those.
RECENT_GAUGES = (
    ("kv_transfer_latency_ms", "Mean KV transfer latency of recent requests (ms).",
     "prefill", "latency_ms"),
    ("kv_transfer_speed_gb_s", "KV transfer speed of recent requests (GB/s).",
     "prefill", "speed_gb_s"),
    ("kv_transfer_total_mb", "Mean KV size sent per recent request (MB).",
     "prefill", "total_mb"),
    ("kv_transfer_bootstrap_ms", "Mean bootstrap (queue) time of recent requests (ms).",
     None, "bootstrap_ms"),
)  # fmt: skip

# Requests decode prefilled itself (--disaggregation-local-prefill-threshold), per side.
LOCAL_PREFILL = {
    "decode": ("num_decode_local_prefill_reqs",
               "Requests decode prefilled itself instead of receiving their KV."),
    "prefill": ("num_prefill_served_by_decode_reqs",
                "Rooms prefill dropped because decode prefilled the request itself."),
}  # fmt: skip


class PDCollector(Collector):
    def __init__(self, prefix: str, model_name: str):
        self.prefix = prefix
        self.model_name = model_name
        self.stats: EngineStats | None = None

    def update(self, stats: EngineStats) -> None:
        if stats.disaggregation is not None:
            self.stats = stats

    def describe(self):
        return []  # families depend on the server's role; nothing to check up front

    def collect(self):
        stats = self.stats
        if stats is None:
            return
        p, model = self.prefix, [self.model_name]
        disagg, snap = stats.disaggregation, stats.pd_metrics or {}
        role = disagg.get("mode")
        for name, doc, side, key in QUEUE_GAUGES:
            if side in (None, role) and key in disagg:
                yield _gauge(p + name, doc, model, disagg[key])
        recent = snap.get("recent", {})
        for name, doc, side, key in RECENT_GAUGES:
            if side in (None, role):
                yield _gauge(p + name, doc, model, recent.get(key, 0.0))
        failed = snap.get("failed", {})
        yield _counter(
            p + "num_bootstrap_failed_reqs",
            "Requests whose PD bootstrap (handshake, page ids) failed.",
            model,
            failed.get("bootstrap", 0),
        )
        yield _counter(
            p + "num_transfer_failed_reqs",
            "Requests whose KV transfer failed.",
            model,
            failed.get("transfer", 0),
        )
        if role in LOCAL_PREFILL:
            name, doc = LOCAL_PREFILL[role]
            yield _counter(p + name, doc, model, snap.get("local_prefill", 0))
        if role == "prefill" and "bytes_transferred" in disagg:
            yield _counter(
                p + "kv_transfer_bytes",
                "KV bytes written to decode (prefill) by the transfer engine.",
                model,
                disagg["bytes_transferred"],
            )
        stages = HistogramMetricFamily(
            p + "per_stage_req_latency_seconds",
            "Time requests spent in each PD stage.",
            labels=["model_name", "stage"],
        )
        for stage, hist in snap.get("stages", {}).items():
            _add_histogram(stages, [*model, stage], hist)
        yield stages
        for key, name, doc in (
            ("transfer_latency_seconds", "kv_transfer_request_latency_seconds",
             "Per request: first KV write started until the last chunk landed on decode."),
            ("transfer_speed_gb_s", "kv_transfer_request_speed_gb_s",
             "Per request: KV bytes over seconds spent in transfer writes (GB/s)."),
        ):  # fmt: skip
            if key in snap:
                family = HistogramMetricFamily(p + name, doc, labels=["model_name"])
                _add_histogram(family, model, snap[key])
                yield family


def _gauge(name: str, doc: str, labels: list[str], value) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["model_name"])
    family.add_metric(labels, float(value))
    return family


def _counter(name: str, doc: str, labels: list[str], value) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["model_name"])
    family.add_metric(labels, float(value))
    return family


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: dict) -> None:
    """``hist``: ``Histogram.snapshot()`` (per-bucket counts) -> cumulative ``le`` buckets."""
    bounds = [*(floatToGoString(b) for b in hist["buckets"]), "+Inf"]
    total, buckets = 0, []
    for bound, count in zip(bounds, hist["counts"], strict=True):
        total += count
        buckets.append((bound, total))
    family.add_metric(labels, buckets, hist["sum"])
