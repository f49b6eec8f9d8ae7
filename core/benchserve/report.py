"""The result document (JSON, schema below) and its human-readable summary.

Top-level keys: ``schema_version``, ``tool``, ``pdcore_version``, ``date``,
``config`` (the flags that shaped the load), ``server`` (what ``/get_model_info``
said), ``summary`` (counts, tokens, throughputs, goodput), ``latency_ms`` (``ttft``,
``tpot``, ``itl``, ``e2e``: count/mean/std/min/p50/p90/p99/max), ``errors``,
``timeline`` (per-bin throughput), ``requests`` (one record per measured request),
``plots`` (PNG paths, when ``--plot-dir`` was given) and, with ``--profile`` only,
``profile`` (trace file paths per worker role: ``prefill``, ``decode``, ``null``;
``errors`` if a worker failed to stop).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pdcore
from pdcore.benchserve import lengths, metrics
from pdcore.benchserve.client import RequestResult
from pdcore.benchserve.load import LoadRun

SCHEMA_VERSION = 1
LATENCY_NAMES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token",
    "itl": "Inter-token Latency",
    "e2e": "End-to-End Latency",
}


def build(config: dict, server: dict, run: LoadRun) -> dict:
    slo_ttft, slo_tpot = config.get("slo_ttft_ms"), config.get("slo_tpot_ms")
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "pdcore bench serving",
        "pdcore_version": pdcore.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "server": server,
        "summary": metrics.summarize(run.results, run.duration, slo_ttft, slo_tpot),
        "latency_ms": metrics.latencies_ms(run.results),
        "errors": metrics.errors(run.results),
        "timeline": metrics.timeline(run.results, run.start, run.duration),
        "requests": [_record(r, run.start) for r in run.results],
        "plots": [],
    }


def _record(r: RequestResult, start: float) -> dict:
    ms = (lambda s: s * 1000) if r.success else (lambda s: None)
    per_token = metrics.tpot(r) if r.success else None
    return {
        "success": r.success,
        "error": r.error or None,
        "prompt_tokens": r.prompt_len,
        "output_tokens": r.output_len,
        "requested_output_tokens": r.requested_output_len,
        "sent_at_s": r.start - start,
        "ttft_ms": ms(r.ttft),
        "tpot_ms": None if per_token is None else per_token * 1000,
        "e2e_ms": ms(r.latency),
        "itl_ms": [gap * 1000 for gap in r.itl] if r.success else [],
    }


def write_json(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def text_summary(report: dict) -> str:
    """The table printed at the end of a run, laid out like SGLang's."""
    s, lat, c = report["summary"], report["latency_ms"], report["config"]
    rows = [
        ("Backend", c["backend"]),
        ("Base URL", c["base_url"]),
        ("Dataset", c["dataset_name"]),
        *_length_rows(report),
        ("Request rate (req/s)", c["request_rate"]),
        ("Max concurrency", c["max_concurrency"] or "unlimited"),
        ("Successful requests", s["completed"]),
        ("Failed requests", s["failed"]),
        ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
        ("Total input tokens", s["total_input_tokens"]),
        ("Total generated tokens", s["total_output_tokens"]),
        ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
        ("Input token throughput (tok/s)", f"{s['input_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{s['output_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{s['total_token_throughput']:.2f}"),
        ("Mean concurrency", f"{s['mean_concurrency']:.2f}"),
    ]
    if s["goodput"] is not None:
        g = s["goodput"]
        rows.append(("Good requests (within SLOs)", g["good_requests"]))
        rows.append(("Request goodput (req/s)", f"{g['request_goodput']:.2f}"))
    lines = [" Serving Benchmark Result ".center(56, "="), *(_row(k, v) for k, v in rows)]
    for key, name in LATENCY_NAMES.items():
        lines.append(f" {name} ".center(56, "-"))
        for stat in ("mean", "p50", "p90", "p99"):
            value = lat[key][stat]
            lines.append(
                _row(f"{stat} {key.upper()} (ms)", "-" if value is None else f"{value:.2f}")
            )
    for e in report["errors"]:
        lines.append(f"error x{e['count']}: {e['error']}")
    lines.append("=" * 56)
    return "\n".join(lines)


def _length_rows(report: dict) -> list[tuple[str, str]]:
    """The range ratio (for the datasets it shapes) and the lengths the measured
    requests were given, min/median/max."""
    c, requests = report["config"], report["requests"]
    rows = []
    if c["dataset_name"] in lengths.RATIO_DATASETS:
        rows.append(("Random range ratio", f"{c['random_range_ratio']:g}"))
    inputs = [r["prompt_tokens"] for r in requests]
    outputs = [r["requested_output_tokens"] for r in requests]
    rows.append(("Input len min/median/max", lengths.spread(inputs)))
    rows.append(("Output len min/median/max", lengths.spread(outputs)))
    return rows


def _row(name: str, value) -> str:
    return f"{name + ':':<34}{value!s:>22}"
