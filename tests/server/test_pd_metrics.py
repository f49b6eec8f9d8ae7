"""PD metrics: engine-side cumulation (``PDMetrics``) and their Prometheus rendering.

The end-to-end check over a real 1P1D cluster is ``tests/router/test_metrics_dashboard.py``;
these pin the arithmetic: stage boundaries, failure counting, bucket placement,
the recent window, and which families each role exports.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdcore.disaggregation.prefill_manager import TransferRecord
from pdcore.engine.io_struct import EngineStats, decode_from_engine, encode
from pdcore.scheduler.pd_metrics import RECENT_S, Histogram, PDMetrics
from pdcore.server.metrics import ServerMetrics


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_histogram_buckets_are_upper_bounds_inclusive():
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.counts == [1, 2, 1], "0.1 goes in le=0.1, 1.0 in le=1.0, 7.0 in +Inf"
    assert h.count == 4 and h.sum == pytest.approx(8.6)


def test_prefill_stages_split_at_admission_and_transfer_start():
    clock = Clock()
    m = PDMetrics("prefill", clock=clock)
    m.open("r")
    clock.now += 0.5  # waiting for decode's page ids
    m.stage("r", "prefill_bootstrap")
    clock.now += 3.0  # prefill compute: no stage
    m.restart("r")
    clock.now += 0.25  # the last chunk's transfer
    m.stage("r", "prefill_transfer_kv_cache")
    m.close("r")
    snap = m.snapshot()["stages"]
    assert snap["prefill_bootstrap"]["sum"] == pytest.approx(0.5)
    assert snap["prefill_transfer_kv_cache"]["sum"] == pytest.approx(0.25), (
        "prefill compute must not count as transfer time"
    )
    assert m.recent()["bootstrap_ms"] == pytest.approx(500)


def test_only_real_rooms_count_and_each_failure_once():
    m = PDMetrics("decode", clock=Clock())
    m.stage("warmup", "decode_bootstrap")  # a fake room was never opened
    m.fail("warmup", "bootstrap")
    m.open("a")
    m.fail("a", "transfer")
    m.fail("a", "transfer")  # a second report of the same room
    m.open("b")
    m.fail("b", "bootstrap")
    assert m.failed == {"bootstrap": 1, "transfer": 1}
    assert m.snapshot()["stages"]["decode_bootstrap"]["count"] == 0


def test_transfer_records_give_latency_speed_and_a_recent_window():
    clock = Clock()
    m = PDMetrics("prefill", clock=clock)
    # 2 GB in 1 s of writes, 1.5 s from the first write to success.
    m.transfers([TransferRecord(1, started=10.0, ended=11.5, nbytes=2_000_000_000, busy_s=1.0)])
    snap = m.snapshot()
    assert snap["transfer_latency_seconds"]["sum"] == pytest.approx(1.5)
    assert snap["transfer_speed_gb_s"]["sum"] == pytest.approx(2.0)
    assert m.recent() == pytest.approx(
        {"bootstrap_ms": 0.0, "latency_ms": 1500.0, "speed_gb_s": 2.0, "total_mb": 2000.0}
    )
    clock.now += RECENT_S + 0.1
    assert m.recent()["speed_gb_s"] == 0.0, "the recent gauges must forget old transfers"
    assert m.snapshot()["transfer_speed_gb_s"]["count"] == 1, "histograms never forget"


def test_decode_snapshot_has_no_transfer_histograms():
    snap = PDMetrics("decode").snapshot()
    assert set(snap["stages"]) == {"decode_bootstrap", "decode_transferred"}
    assert "transfer_latency_seconds" not in snap, "decode cannot time prefill's writes"


def stats(mode: str, pd: PDMetrics | None, **disagg) -> EngineStats:
    """An ``EngineStats`` as the front end receives it (through msgpack)."""
    base = {
        "prefill": {"bootstrap_queue": 2, "transfer_queue": 1, "bytes_transferred": 4096},
        "decode": {"prealloc_queue": 3, "transfer_queue": 4, "bytes_transferred": 0},
    }
    s = EngineStats(
        token=1,
        num_running=0,
        num_waiting=0,
        total_pages=8,
        free_pages=8,
        used_pages=0,
        cached_pages=0,
        page_size=16,
        disaggregation={"mode": mode, "held_pages": 5, **base[mode], **disagg} if pd else None,
        pd_metrics=pd.snapshot() if pd else None,
    )
    return decode_from_engine(encode([s]))[0]


def rendered(s: EngineStats) -> dict[str, dict]:
    """``{sample name: {label tuple: value}}`` of a server's ``/metrics`` after ``s``."""
    metrics = ServerMetrics("m")
    metrics.observe_engine(s)
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_prefill_exports_queues_transfers_and_cumulative_buckets():
    pd = PDMetrics("prefill")
    pd.transfers([TransferRecord(1, 0.0, 0.003, 3_000_000, 0.001)])  # 3 ms, 3 GB/s
    got = rendered(stats("prefill", pd))
    assert got["sglang:num_prefill_prealloc_queue_reqs"] == {(("model_name", "m"),): 2}
    assert got["sglang:num_prefill_inflight_queue_reqs"] == {(("model_name", "m"),): 1}
    assert got["sglang:kv_transfer_pages_in_flight"] == {(("model_name", "m"),): 5}
    assert got["sglang:kv_transfer_bytes_total"] == {(("model_name", "m"),): 4096}
    assert got["sglang:num_transfer_failed_reqs_total"] == {(("model_name", "m"),): 0}
    buckets = got["sglang:kv_transfer_request_latency_seconds_bucket"]
    le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert (le["0.002"], le["0.004"], le["+Inf"]) == (0, 1, 1), f"not cumulative: {le}"
    assert "sglang:num_decode_prealloc_queue_reqs" not in got, "decode gauges on a prefill"
    stage_labels = {dict(k)["stage"] for k in got["sglang:per_stage_req_latency_seconds_count"]}
    assert stage_labels == {"prefill_bootstrap", "prefill_transfer_kv_cache"}


def test_decode_exports_its_queues_but_no_sender_metrics():
    got = rendered(stats("decode", PDMetrics("decode")))
    assert got["sglang:num_decode_prealloc_queue_reqs"] == {(("model_name", "m"),): 3}
    assert got["sglang:num_decode_transfer_queue_reqs"] == {(("model_name", "m"),): 4}
    assert "sglang:num_bootstrap_failed_reqs_total" in got
    for sender_only in ("sglang:kv_transfer_bytes_total", "sglang:kv_transfer_speed_gb_s"):
        assert sender_only not in got, f"{sender_only} is prefill's to export"


def test_null_mode_exports_no_pd_metrics():
    got = rendered(stats("prefill", None))
    pd_names = [n for n in got if "kv_transfer" in n or "per_stage" in n or "prealloc" in n]
    assert not pd_names, f"a null-mode server exported PD metrics: {pd_names}"
    assert "sglang:num_running_reqs" in got
