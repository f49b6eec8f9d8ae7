"""`pdcore bench serving` as a command: flag errors name the flag, an unreachable server
is one line and exit 1, and a run against a scripted server reports warm-up-free,
failure-aware results (JSON, text summary, progress, plots)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from benchserve.stub_server import StubServer
from e2e.server_process import free_port
from helpers import run_cli

from pdcore.benchserve import plots
from pdcore.benchserve.cli import run


def test_bench_without_a_benchmark_is_a_usage_error():
    out = run_cli("bench")
    assert out.returncode == 2, out.stderr
    assert "pdcore bench: error: which benchmark? choose one of: serving" in out.stderr


def test_bench_with_an_unknown_benchmark_names_it_and_the_choices():
    out = run_cli("bench", "serve")
    assert out.returncode == 2, out.stderr
    assert "unknown benchmark 'serve'; choose one of: serving" in out.stderr


def test_unreachable_base_url_exits_1_with_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    out = run_cli("bench", "serving", "--base-url", url, "--num-prompts", "2")
    assert out.returncode == 1, out.stderr
    assert f"pdcore bench serving: error: cannot reach {url}" in out.stderr, out.stderr
    assert "--base-url" in out.stderr and "Traceback" not in out.stderr, out.stderr


BAD_FLAGS = {
    "negative rate": (["--request-rate", "-1"], "--request-rate: must be > 0 (or inf)"),
    "nan rate": (["--request-rate", "nan"], "--request-rate: must be > 0"),
    "zero concurrency": (["--max-concurrency", "0"], "--max-concurrency: must be >= 1"),
    "no prompts": (["--num-prompts", "0"], "--num-prompts: must be >= 1"),
    "negative warm-up": (["--warmup-requests", "-1"], "--warmup-requests: must be >= 0"),
    "ratio above 1": (["--random-range-ratio", "1.5"], "--random-range-ratio: must be in 0..1"),
    "zero SLO": (["--slo-tpot-ms", "0"], "--slo-tpot-ms: must be > 0"),
    "sharegpt without file": (["--dataset-name", "sharegpt"], "--dataset-path: required"),
    "bad extra body": (["--extra-request-body", "[1]"], "--extra-request-body: must be a JSON"),
    "base url scheme": (["--base-url", "localhost:30000"], "--base-url: must start with http://"),
    "unknown backend": (["--backend", "vllm"], "--backend: invalid choice"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flag_exits_2_naming_the_flag(case, capsys):
    argv, message = BAD_FLAGS[case]
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pdcore bench serving: error: ") and message in err, err


def test_sharegpt_file_problems_are_found_before_any_request(tmp_path, capsys):
    stub = StubServer()
    try:
        path = tmp_path / "broken.json"
        path.write_text("[{")
        with pytest.raises(SystemExit) as e:
            run(["--base-url", stub.url, "--dataset-name", "sharegpt", "--dataset-path", str(path)])
    finally:
        stub.stop()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--dataset-path: {path} is not valid JSON" in err, err
    assert stub.bodies == [], "no request may be sent with a broken dataset"


def test_plots_without_matplotlib_name_the_missing_package(monkeypatch):
    monkeypatch.setattr(plots.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(Exception, match="--plot-dir: plots need matplotlib") as e:
        plots.require()
    assert "pip install matplotlib" in str(e.value)


def bench_stub(stub: StubServer, tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    argv = ["--base-url", stub.url, "--num-prompts", "6", "--random-input-len", "12"]
    argv += ["--random-output-len", "5", "--random-range-ratio", "1", "--warmup-requests", "2"]
    code = run([*argv, "--output-file", str(out), *extra])
    return code, json.loads(out.read_text())


def fail_every_third(body):
    """A deterministic share of failures: prompts whose first token id is divisible by 3."""
    return (503, "no decode worker") if body["input_ids"][0] % 3 == 0 else None


def test_warm_up_requests_are_sent_but_not_measured(tmp_path):
    stub = StubServer()
    try:
        code, report = bench_stub(stub, tmp_path)
    finally:
        stub.stop()
    assert code == 0
    assert len(stub.bodies) == 2 + 6, "2 warm-up + 6 measured requests reach the server"
    assert report["summary"]["completed"] == 6 and len(report["requests"]) == 6
    assert report["summary"]["total_output_tokens"] == 6 * 5


def test_failed_requests_are_counted_and_reported_with_their_error(tmp_path, capsys):
    stub = StubServer(fail=fail_every_third)
    try:
        code, report = bench_stub(stub, tmp_path, "--warmup-requests", "0", "--seed", "5")
    finally:
        stub.stop()
    n_failed = sum(1 for b in stub.bodies if fail_every_third(b))
    assert 0 < n_failed < 6, "the seed should give some failures and some successes"
    assert code == 0, "a run with some successes is a completed benchmark"
    s = report["summary"]
    assert (s["completed"], s["failed"]) == (6 - n_failed, n_failed)
    assert report["errors"] == [{"error": "HTTP 503: no decode worker", "count": n_failed}]
    failures = [r for r in report["requests"] if not r["success"]]
    assert all(
        r["error"] == "HTTP 503: no decode worker" and r["ttft_ms"] is None for r in failures
    )
    assert f"error x{n_failed}: HTTP 503: no decode worker" in capsys.readouterr().out


def test_a_run_where_every_request_fails_exits_1(tmp_path, capsys):
    stub = StubServer(fail=lambda body: (500, "engine dead"))
    try:
        code, report = bench_stub(stub, tmp_path, "--warmup-requests", "0")
    finally:
        stub.stop()
    assert code == 1
    assert report["summary"]["failed"] == 6
    assert "all 6 requests failed" in capsys.readouterr().err


def test_failing_warm_up_stops_before_the_run_with_the_error(tmp_path, capsys):
    stub = StubServer(fail=lambda body: (400, "prompt too long"))
    try:
        code = run(["--base-url", stub.url, "--num-prompts", "4", "--random-input-len", "4"])
    finally:
        stub.stop()
    assert code == 1
    assert len(stub.bodies) == 1, "only the warm-up request may be sent"
    err = capsys.readouterr().err
    assert "every warm-up request failed; the first: HTTP 400: prompt too long" in err, err


def test_progress_goes_to_stderr_and_can_be_disabled(tmp_path, capsys):
    stub = StubServer()
    try:
        bench_stub(stub, tmp_path)
        shown = capsys.readouterr()
        bench_stub(stub, tmp_path, "--disable-progress")
        hidden = capsys.readouterr()
    finally:
        stub.stop()
    assert "benchmark [" in shown.err and "6/6" in shown.err, shown.err
    assert "benchmark [" not in hidden.err, hidden.err
    assert "Serving Benchmark Result" in shown.out and "benchmark [" not in shown.out


def test_openai_backend_needs_a_tokenizer_and_says_which_flag(tmp_path, capsys):
    stub = StubServer()
    try:
        with pytest.raises(SystemExit) as e:
            run(["--base-url", stub.url, "--backend", "openai", "--num-prompts", "2"])
    finally:
        stub.stop()
    assert e.value.code == 2
    err = capsys.readouterr().err
    missing = "--tokenizer: the server's tokenizer (/nonexistent/stub-tokenizer) is not on this"
    assert missing in err and "pass --tokenizer" in err, err
    assert stub.bodies == [], "nothing may be sent without the prompts"


def test_synthetic_conversations_run_without_a_tokenizer_over_openai(tmp_path):
    stub = StubServer()
    try:
        code, report = bench_stub(
            stub, tmp_path, "--backend", "openai", "--dataset-name", "synthetic-conversations"
        )
    finally:
        stub.stop()
    assert code == 0 and report["summary"]["completed"] == 6
    assert report["config"]["model"] == "stub-model"
    assert all(r["output_tokens"] == 5 for r in report["requests"]), report["requests"]


def test_python_dash_m_pdcore_benchserve_is_the_same_command():
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "pdcore.benchserve", "--base-url", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"python -m pdcore.benchserve: error: cannot reach {url}" in out.stderr, out.stderr
