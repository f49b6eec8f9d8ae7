"""Profiling per role on a real 1P1D cluster (prefill + decode over Mooncake TCP, the
PD router, all on 127.0.0.1, the tiny Qwen3 checkpoint): ``pdcore bench serving
--profile`` traces prefill and decode separately and lists the files by role, and
the router fans ``/start_profile`` and ``/stop_profile`` out by role."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from router.cluster import pd_router_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAST = ("--skip-server-warmup",)


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    with pd_router_cluster(qwen3_path, *FAST) as (prefill, decode, router):
        yield prefill, decode, router


def trace_event_names(path: str) -> set[str]:
    assert os.path.getsize(path) > 0, f"{path} is empty"
    with open(path) as f:
        trace = json.load(f)
    assert "traceEvents" in trace, f"{path} is not a Chrome trace"
    return {e.get("name") for e in trace["traceEvents"]}


def test_bench_profile_writes_prefill_and_decode_traces_named_by_role(cluster, tmp_path):
    _, _, router = cluster
    out_file, trace_dir = tmp_path / "result.json", tmp_path / "traces"
    cmd = [
        sys.executable, "-m", "pdcore", "bench", "serving", "--base-url", router.url,
        "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "4",
        "--random-range-ratio", "1", "--warmup-requests", "1", "--disable-progress",
        "--profile", "--profile-output-dir", str(trace_dir), "--output-file", str(out_file),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, f"exit {run.returncode}\nstderr:\n{run.stderr}"
    report = json.loads(out_file.read_text())
    assert report["summary"]["completed"] == 4, report["errors"]

    profile = report["profile"]
    assert set(profile) == {"prefill", "decode"}, f"trace files by role: {profile}"
    for role, files in profile.items():
        assert len(files) == 1, f"one trace per {role} worker: {files}"
        name = os.path.basename(files[0])
        assert os.path.dirname(files[0]) == str(trace_dir), files[0]
        assert name.endswith(f"-{role}-TP-0.trace.json"), f"{role} trace not named by role"
        names = trace_event_names(files[0])
        assert f"pdcore.{role}_step" in names, f"the {role} trace holds no {role} engine step"
        assert f"{role} trace: {files[0]}" in run.stderr, run.stderr
    assert sorted(os.listdir(trace_dir)) == sorted(
        os.path.basename(f) for files in profile.values() for f in files
    ), "every file written is in the report"


def test_router_fans_profile_requests_out_by_role(cluster, tmp_path):
    prefill, decode, router = cluster
    body = {"role": "decode", "output_dir": str(tmp_path)}
    started = router.post("/start_profile", body)
    assert started.status_code == 200, started.text
    assert [w["url"] for w in started.json()["workers"]] == [decode.url], started.json()

    again = router.post("/start_profile", {})  # decode is busy, prefill starts
    assert again.status_code == 400, f"a worker's 400 must be the router's: {again.text}"
    by_url = {w["url"]: w for w in again.json()["workers"]}
    assert by_url[decode.url]["status"] == 400, by_url
    assert "already in progress" in by_url[decode.url]["response"]["error"]["message"]
    assert by_url[prefill.url]["status"] == 200, by_url

    stopped = router.post("/stop_profile")
    assert stopped.status_code == 200, stopped.text
    files = {w["role"]: w["response"]["files"] for w in stopped.json()["workers"]}
    assert set(files) == {"prefill", "decode"}, files
    for role, [path] in files.items():
        assert os.path.basename(path).endswith(f"-{role}-TP-0.trace.json"), path
    assert os.path.dirname(files["decode"][0]) == str(tmp_path), "the body reached the worker"

    bad = httpx.post(f"{router.url}/start_profile", json={"role": "both"}, timeout=30)
    assert bad.status_code == 400 and "role" in bad.json()["error"]["message"], bad.text
