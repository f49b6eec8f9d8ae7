"""`pdcore bench serving` against a real 1P1D cluster (prefill + decode over Mooncake TCP
and the PD router, all on 127.0.0.1, the tiny Qwen3 checkpoint): the JSON report has the
documented shape and sane values, and the PNG plots are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from router.cluster import pd_router_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NUM = 8
INPUT_LEN, OUTPUT_LEN, RATIO = 24, 6, 0.5
TOP_LEVEL = {
    "schema_version", "tool", "pdcore_version", "date", "config", "server", "summary",
    "latency_ms", "errors", "timeline", "requests", "plots",
}  # fmt: skip
STATS = {"count", "mean", "std", "min", "p50", "p90", "p99", "max"}
FAST = ("--skip-server-warmup",)


@pytest.fixture(scope="module")
def router_url(qwen3_path):
    with pd_router_cluster(qwen3_path, *FAST) as (_, _, router):
        yield router.url


def bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pdcore", "bench", "serving", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def test_bench_serving_through_the_router_writes_report_and_plots(router_url, tmp_path):
    out_file, plot_dir = tmp_path / "result.json", tmp_path / "plots"
    run = bench(
        "--base-url", router_url, "--backend", "sglang", "--dataset-name", "random",
        "--num-prompts", str(NUM), "--random-input-len", str(INPUT_LEN),
        "--random-output-len", str(OUTPUT_LEN), "--random-range-ratio", str(RATIO),
        "--request-rate", "40", "--max-concurrency", "4", "--warmup-requests", "1",
        "--seed", "3", "--slo-ttft-ms", "600000", "--slo-tpot-ms", "600000",
        "--output-file", str(out_file), "--plot-dir", str(plot_dir),
    )  # fmt: skip
    assert run.returncode == 0, (
        f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    )
    assert "Serving Benchmark Result" in run.stdout, run.stdout
    assert f"{NUM}/{NUM}" in run.stderr, f"no final progress line on stderr:\n{run.stderr}"
    report = json.loads(out_file.read_text())

    assert set(report) == TOP_LEVEL, f"top-level keys: {sorted(report)}"
    summary = report["summary"]
    assert (summary["completed"], summary["failed"]) == (NUM, 0), report["errors"]
    assert summary["duration_s"] > 0 and summary["request_throughput"] > 0, summary
    assert summary["output_throughput"] > 0 and summary["input_throughput"] > 0, summary
    assert summary["goodput"]["good_requests"] == NUM, summary["goodput"]

    requests = report["requests"]
    assert len(requests) == NUM, "warm-up requests must not be among the measured ones"
    for r in requests:
        assert r["success"], r
        assert OUTPUT_LEN * RATIO <= r["requested_output_tokens"] <= OUTPUT_LEN, r
        assert r["output_tokens"] == r["requested_output_tokens"], f"ignore_eos not honoured: {r}"
        assert INPUT_LEN * RATIO <= r["prompt_tokens"] <= INPUT_LEN, r
        assert 0 < r["ttft_ms"] <= r["e2e_ms"], r
        # a chunk may carry several tokens (no gap for the first chunk's extra ones)
        assert 1 <= len(r["itl_ms"]) <= r["output_tokens"] - 1, r
        assert sum(r["itl_ms"]) <= r["e2e_ms"] - r["ttft_ms"] + 1e-6, "gaps lie after TTFT"
    assert summary["total_output_tokens"] == sum(r["output_tokens"] for r in requests)

    for name, stats in report["latency_ms"].items():
        assert set(stats) == STATS, f"{name}: {sorted(stats)}"
        ordered = [stats[k] for k in ("min", "p50", "p90", "p99", "max")]
        assert ordered == sorted(ordered), (name, stats)
        # two events read in one network read arrive together: an ITL of 0 is possible
        assert stats["min"] >= 0 if name == "itl" else stats["min"] > 0, (name, stats)
    assert report["latency_ms"]["ttft"]["count"] == NUM

    assert len(report["plots"]) == 2, report["plots"]
    for path in report["plots"]:
        data = open(path, "rb").read()
        assert data.startswith(b"\x89PNG") and len(data) > 1000, f"{path}: {len(data)} bytes"


def test_bench_serving_openai_backend_sends_text_of_the_asked_length(router_url, tmp_path):
    """Text prompts from the tokenizer the server names (the checkpoint's folder, which
    is on this machine), completions streamed from /v1/completions."""
    out_file = tmp_path / "openai.json"
    run = bench(
        "--base-url", router_url, "--backend", "openai", "--num-prompts", "4",
        "--random-input-len", "16", "--random-output-len", "4", "--random-range-ratio", "1",
        "--warmup-requests", "0", "--disable-progress", "--output-file", str(out_file),
    )  # fmt: skip
    assert run.returncode == 0, f"exit {run.returncode}\nstderr:\n{run.stderr}"
    report = json.loads(out_file.read_text())
    assert report["summary"]["completed"] == 4, report["errors"]
    for r in report["requests"]:
        assert r["output_tokens"] == 4, r
        assert 12 <= r["prompt_tokens"] <= 16, f"text prompt re-encodes far from 16: {r}"
