"""PD metrics, the Grafana dashboard and the router's ``/dashboard`` on a real 1P1D cluster.

One Mooncake (TCP) prefill, one decode and a router process per module. Requests
go through the router; every server's ``/metrics`` must then show PD counters and
histograms that moved, the router's state must describe both workers, every
metric the Grafana dashboard queries must exist, and the status page must render
the workers in headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e.server_process import ServerProcess
from prometheus_client.parser import text_string_to_metric_families
from router.cluster import decode_args, start_parallel, start_prefill, wait_for
from router.router_process import RouterProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docs" / "grafana-pdcore.json"
N = 4
# Two prompts longer than the chunked-prefill size (64): several chunks per room.
PROMPTS = ["The capital of France is", "1, 2, 3, 4," * 20, "Once upon a time", "a b c d " * 30]
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
WINDOW = (1280, 720)


@pytest.fixture(scope="module")
def cluster(qwen3_path):
    (prefill, _), decode = start_parallel(
        lambda: start_prefill(qwen3_path), lambda: ServerProcess(*decode_args(qwen3_path))
    )
    router = None
    try:
        router = RouterProcess(
            "--pd-disaggregation",
            "--prefill",
            prefill.url,
            "--decode",
            decode.url,
            "--health-check-interval-secs",
            "0.3",
        )
        yield prefill, decode, router
    finally:
        for proc in (router, decode, prefill):
            if proc is not None:
                proc.stop()


@pytest.fixture(scope="module")
def traffic(cluster):
    """``/metrics`` of prefill, decode and router before and after N requests through the router."""
    before = [p.get("/metrics").text for p in cluster]
    for text in PROMPTS[:N]:
        r = cluster[2].post("/generate", {"text": text, "sampling_params": GREEDY})
        assert r.status_code == 200, f"request through the router failed: {r.text}"
    after = [p.get("/metrics").text for p in cluster]
    return before, after


def samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted label pairs): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float | None:
    """Sum of ``name``'s samples whose labels include ``labels``; None if there is none."""
    found = [
        v
        for (n, pairs), v in samples(text).items()
        if n == name and set(labels.items()) <= set(pairs)
    ]
    return sum(found) if found else None


def grew(before: str, after: str, name: str, by: float = 1, **labels) -> None:
    old, new = value(before, name, **labels), value(after, name, **labels)
    assert new is not None, f"{name}{labels or ''} missing from /metrics"
    assert new - (old or 0) >= by, f"{name}{labels or ''} went {old} -> {new}, expected +{by}"


def test_prefill_metrics_move(traffic):
    (before, _, _), (after, _, _) = traffic
    grew(before, after, "sglang:num_requests_total", N)
    grew(before, after, "sglang:kv_transfer_bytes_total", 1)
    grew(before, after, "sglang:kv_transfer_request_latency_seconds_count", N)
    grew(before, after, "sglang:kv_transfer_request_speed_gb_s_count", N)
    for stage in ("prefill_bootstrap", "prefill_transfer_kv_cache"):
        grew(before, after, "sglang:per_stage_req_latency_seconds_count", N, stage=stage)
    assert value(after, "sglang:kv_transfer_speed_gb_s") > 0, "no recent transfer speed"
    assert value(after, "sglang:kv_transfer_latency_ms") > 0, "no recent transfer latency"
    for gauge in (
        "sglang:num_prefill_prealloc_queue_reqs",
        "sglang:num_prefill_inflight_queue_reqs",
        "sglang:kv_transfer_pages_in_flight",
        "sglang:num_bootstrap_failed_reqs_total",
        "sglang:num_transfer_failed_reqs_total",
    ):
        assert value(after, gauge) is not None, f"prefill /metrics lacks {gauge}"


def test_decode_metrics_move(traffic):
    (_, before, _), (_, after, _) = traffic
    grew(before, after, "sglang:time_to_first_token_seconds_count", N)
    grew(before, after, "sglang:generation_tokens_total", N * GREEDY["max_new_tokens"])
    for stage in ("decode_bootstrap", "decode_transferred"):
        grew(before, after, "sglang:per_stage_req_latency_seconds_count", N, stage=stage)
    for gauge in (
        "sglang:num_decode_prealloc_queue_reqs",
        "sglang:num_decode_transfer_queue_reqs",
        "sglang:kv_transfer_pages_in_flight",
        "sglang:kv_transfer_bootstrap_ms",
    ):
        assert value(after, gauge) is not None, f"decode /metrics lacks {gauge}"
    assert value(after, "sglang:kv_transfer_request_latency_seconds_count") is None, (
        "decode cannot time the writes; it must not export an always-empty transfer histogram"
    )


def test_router_metrics_move(cluster, traffic):
    prefill, decode, _ = cluster
    (_, _, before), (_, _, after) = traffic
    for url in (prefill.url, decode.url):
        grew(before, after, "pdcore_router_requests_total", N, worker=url)
        assert value(after, "pdcore_router_worker_healthy", worker=url) == 1, f"{url} not healthy"
        for gauge in ("pdcore_router_worker_in_flight", "pdcore_router_worker_load"):
            assert value(after, gauge, worker=url) is not None, f"{gauge} lacks {url}"
    assert value(after, "pdcore_router_worker_kv_transfer_gb_s", worker=prefill.url) is not None


def test_failed_bootstrap_is_counted(cluster):
    """A decode request whose prefill cannot be reached fails and counts as a bootstrap failure."""
    _, decode, _ = cluster
    before = decode.get("/metrics").text
    body = {
        "text": "hello",
        "sampling_params": GREEDY,
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": 9,  # discard: nothing listens
        "bootstrap_room": 12345,
    }
    r = decode.post("/generate", body)
    assert r.status_code >= 400, f"decode answered {r.status_code} without a prefill"
    grew(before, decode.get("/metrics").text, "sglang:num_bootstrap_failed_reqs_total", 1)


def test_dashboard_state_lists_workers_by_role(cluster, traffic):
    prefill, decode, router = cluster
    state = router.get("/dashboard/state").json()
    assert set(state) == {"router", "totals", "roles"}, state.keys()
    assert state["router"]["pd_disaggregation"] is True
    assert state["totals"]["workers"] == 2 and state["totals"]["healthy"] == 2, state["totals"]
    for role, server, queues in (
        ("prefill", prefill, ("bootstrap_queue", "transfer_queue")),
        ("decode", decode, ("prealloc_queue", "transfer_queue")),
    ):
        (worker,) = state["roles"][role]
        assert worker["url"] == server.url and worker["healthy"] is True, worker
        assert worker["circuit"] == "closed" and isinstance(worker["in_flight"], int), worker
        for key in (*queues, "held_pages", "bootstrap_failed", "transfer_failed"):
            assert isinstance(worker["pd"].get(key), int), f"{role} pd stats lack {key}: {worker}"
        assert isinstance(worker["kv_history"], list) and isinstance(worker["load"], int)
    assert state["roles"]["regular"] == []


def test_dashboard_shows_a_transfer_rate_after_traffic(cluster, traffic):
    router = cluster[2]

    def prefill_history() -> list:
        return router.get("/dashboard/state").json()["roles"]["prefill"][0]["kv_history"]

    # Health checks sample the byte counter; the traffic happened between two samples.
    wait_for(lambda: len(prefill_history()) >= 2, 10, "two KV rate samples")
    assert any(gb_s > 0 for _, gb_s in prefill_history()), (
        f"no positive KV transfer rate in the prefill's history: {prefill_history()}"
    )


def test_dashboard_page_is_self_contained(cluster):
    r = cluster[2].get("/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "dashboard/state" in page, "the page must poll the state endpoint"
    for external in ("<script src", "<link", "@import", "url("):
        assert external not in page, f"the page loads something from outside: {external!r}"


def declared_names(text: str) -> set[str]:
    """Every name a query may use: samples and the families' TYPE lines (empty families too)."""
    names = {name for name, _ in samples(text)}
    for m in re.finditer(r"^# TYPE (\S+) (\w+)$", text, re.M):
        family, kind = m.groups()
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names.update(family + s for s in suffixes)
    return names


def test_grafana_dashboard_queries_only_existing_metrics(cluster, traffic):
    dash = json.loads(GRAFANA.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs.append(variables["model_name"]["definition"])
    assert len(exprs) >= 20, f"expected a full dashboard, found {len(exprs)} queries"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = set().union(*(declared_names(text) for text in traffic[1]))
    metric = re.compile(r"\b(sglang:[a-z0-9_:]+|pdcore_router_[a-z0-9_]+)\b")
    for expr in exprs:
        names = metric.findall(expr)
        assert names, f"query uses no pdcore metric: {expr}"
        missing = [n for n in names if n not in known]
        assert not missing, f"{missing} not in any /metrics output (query: {expr})"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=5000",  # let the page's fetch and render run first
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (apt-get install --no-install-recommends chromium)",
)
def test_dashboard_renders_in_headless_chromium(cluster, traffic, tmp_path):
    from PIL import Image, ImageStat

    prefill, decode, router = cluster
    url = f"{router.url}/dashboard"
    dom = run_chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, f"chromium --dump-dom failed: {dom.stderr[-2000:]}"
    assert 'data-renders="0"' not in dom.stdout, "the page never rendered a state"
    for server in (prefill, decode):
        assert f'data-url="{server.url}"' in dom.stdout, f"no row for {server.url} in the DOM"
    banner = re.search(r'<div id="error"[^>]*>(.*?)</div>', dom.stdout, re.S)
    assert banner and not banner[1].strip(), f"the page shows an error: {banner and banner[1]}"

    png = tmp_path / "dashboard.png"
    shot = run_chromium(tmp_path, f"--screenshot={png}", url)
    assert shot.returncode == 0 and png.exists(), f"no screenshot: {shot.stderr[-2000:]}"
    image = Image.open(png).convert("RGB")
    assert image.size == WINDOW, f"screenshot is {image.size}, asked for {WINDOW}"
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    colors = len(image.getcolors(maxcolors=1 << 20) or [])
    assert spread > 10 and colors > 50, f"screenshot looks blank (stddev {spread}, {colors} colors)"
