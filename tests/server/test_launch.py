"""``serve``: spawns the engine, serves HTTP, and cleans up on SIGTERM or load errors."""

from __future__ import annotations

import glob
import os
import signal
import socket

import httpx
import pytest
from helpers import write_plugin
from server.harness import TESTS, free_port, run_script, wait_healthy

SCRIPT = """
import sys
from server.fake_backend import ByteTokenizer, {target}
from pdcore.config import ServerArgs
from pdcore.server.launch import serve
args = ServerArgs(model_path="/models/Fake-Model-1B", port={port}, log_level="warning")
info = {{"model_path": args.model_path, "device": "cpu"}}  # skips platform probing
sys.exit(serve(args, server_info=info, engine_target={target}, tokenizer=ByteTokenizer()))
"""


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Each launched server makes its ipc dir here, so other processes' dirs don't count."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def launch(target: str, port: int):
    return run_script(SCRIPT.format(target=target, port=port), env={"TMPDIR": os.environ["TMPDIR"]})


def ipc_dirs() -> set[str]:
    return set(glob.glob(os.path.join(os.environ["TMPDIR"], "pdcore-ipc-*")))


def test_serve_runs_until_sigterm_then_cleans_up():
    before = ipc_dirs()
    port = free_port()
    proc = launch("run_fake_engine", port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url)
        created = ipc_dirs() - before
        assert len(created) == 1 and oct(os.stat(created.pop()).st_mode & 0o777) == "0o700"
        out = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 5}).json()
        assert out["choices"][0]["text"] == "Hello"
        info = httpx.get(f"{url}/get_server_info").json()
        engine_pid = info["engine_info"]["pid"]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "engine ready" in stdout
    assert not os.path.exists(f"/proc/{engine_pid}"), "engine process left running"
    assert ipc_dirs() <= before, "temp ipc dir left behind"


def test_engine_load_error_exits_1_with_the_message():
    before = ipc_dirs()
    proc = launch("run_failing_engine", free_port())
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "the engine failed to start" in stderr and "missing tensor 'lm_head'" in stderr
    assert ipc_dirs() <= before


def test_busy_port_fails_before_the_engine_starts():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        before = ipc_dirs()
        proc = launch("run_fake_engine", port)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"--port: cannot listen on 127.0.0.1:{port}" in stderr
    assert "starting the engine" not in stdout, "the engine was started for a busy port"
    assert ipc_dirs() <= before


def test_serve_warns_at_start_about_a_plugin_that_failed_to_load(tmp_path):
    site = tmp_path / "site"
    import_error = "raise ImportError('libacme.so: no such file')\n"
    write_plugin(site, "acme-broken", "acme_broken", import_error)
    with socket.create_server(("127.0.0.1", 0)) as busy:  # stop right after the start notes
        proc = run_script(
            SCRIPT.format(target="run_fake_engine", port=busy.getsockname()[1]),
            env={"TMPDIR": os.environ["TMPDIR"], "PYTHONPATH": f"{TESTS}{os.pathsep}{site}"},
        )
        _, stderr = proc.communicate(timeout=30)
    [line] = [x for x in stderr.splitlines() if "acme-broken" in x]
    assert "WARNING" in line and "ImportError: libacme.so" in line, (
        f"a plugin that failed to load must be one WARNING line at start: {stderr}"
    )
