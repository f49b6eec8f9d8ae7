"""`pdcore up`: one command starts prefill + decode + router, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from e2e import conftest as e2e_fixtures
from e2e.server_process import free_port
from helpers import run_cli

from pdcore.up.args import parse_up_args
from pdcore.up.cluster import Up as UpCommand

# the tiny Qwen3 checkpoint fixture and what it needs, from tests/e2e/conftest.py
_one_torch_thread = e2e_fixtures._one_torch_thread
smollm2_path = e2e_fixtures.smollm2_path
smollm2_tokenizer = e2e_fixtures.smollm2_tokenizer
qwen3_path = e2e_fixtures.qwen3_path

READY = re.compile(r"router on (http://\S+)")
SMALL = ("--server-args", "--max-total-tokens 2048 --page-size 16 --skip-server-warmup")


class Up:
    """``python -m pdcore up ...`` with its stdout lines in a queue and its processes tracked."""

    def __init__(self, *args: str):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdcore", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.seen: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr).append(line)
            if is_stdout:
                self.lines.put(line)

    def track(self) -> int:
        """Remember every descendant alive now; how many are known."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                if p.pid not in self.seen:
                    self.seen[p.pid] = p
                    self.names[p.pid] = " ".join(p.cmdline()[:4])
        except psutil.NoSuchProcess:
            pass
        return len(self.seen)

    def wait_ready(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.track()
            try:
                line = self.lines.get(timeout=0.3)
            except queue.Empty:
                assert self.proc.poll() is None, f"`pdcore up` exited early:\n{self.log()}"
                continue
            if match := READY.search(line):
                return match.group(1)
        raise AssertionError(f"no ready line within {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.track()
            time.sleep(0.1)
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            msg = f"`pdcore up` still running after {timeout}s:\n{self.log()}"
            raise AssertionError(msg) from None

    def leftovers(self) -> list[str]:
        """Descendants ever seen that are still running, after a moment to reap them."""
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=5)
        return [f"{p.pid} {self.names[p.pid]}" for p in alive if _running(p)]

    def log(self) -> str:
        return "stdout:\n" + "".join(self.stdout) + "\nstderr:\n" + "".join(self.stderr)

    def kill(self) -> None:
        """Clean-up after a failed test: nothing may outlive it either way."""
        for p in [*self.seen.values(), self.proc]:
            try:
                p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        self.proc.wait(10)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def can_bind(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_logs_kept(up: Up) -> None:
    """The log folder announced at start is still there at exit, and said so."""
    err = "".join(up.stderr)
    announced = re.search(r"logs in (\S+)", err)
    assert announced, f"no log folder announced at start:\n{err}"
    folder = announced.group(1)
    assert f"stopped; logs kept in {folder}" in err, f"exit should say where the logs are:\n{err}"
    logs = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    assert {"prefill-0.log", "decode-0.log", "router.log"} <= set(logs), (
        f"a clean stop must keep the logs it announced; {folder} holds {logs}"
    )
    shutil.rmtree(folder)


def test_help_lists_the_main_flags():
    out = run_cli("up", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--prefill", "--decode", "--model-path", "--transfer-backend", "--once", "--port"):
        assert flag in out.stdout, f"`pdcore up --help` does not mention {flag}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prefill", "0"), "--prefill: must be >= 1, got 0"),
        (("--num-decode", "-1"), "--decode: must be >= 1, got -1"),
        (("--port", "70000"), "--port: must be a TCP port in 1..65535"),
        (("--server-args", "'unclosed"), "--server-args"),
    ],
)
def test_bad_flag_is_a_one_line_error_naming_it(args, message):
    out = run_cli("up", *args)
    assert out.returncode == 2, f"expected a usage error for {args}: {out.stderr}"
    assert message in out.stderr, out.stderr


def test_user_server_flags_come_after_the_defaults_so_they_win():
    args = parse_up_args(
        [
            "--port",
            str(free_port()),
            "--server-args",
            "--device auto",
            "--",
            "--max-total-tokens",
            "512",
        ]
    )
    cluster = UpCommand(args)
    try:
        cmd = cluster._server_args()
    finally:
        cluster.http.close()
        shutil.rmtree(cluster.log_dir)
    assert cmd[-4:] == ["--device", "auto", "--max-total-tokens", "512"], cmd
    assert cmd.index("--device") < len(cmd) - 4, f"the cpu default is missing: {cmd}"


def test_api_key_goes_to_every_server_and_the_router_and_its_own_client():
    args = parse_up_args(["--port", str(free_port()), "--api-key", "up-key-123"])
    cluster = UpCommand(args)
    try:
        workers = [("prefill", "http://127.0.0.1:1", 2), ("decode", "http://127.0.0.1:3", None)]
        cmds = [cluster._server_args(), cluster._router_args(workers)]
        client_auth = cluster.http.headers.get("authorization")
    finally:
        cluster.http.close()
        shutil.rmtree(cluster.log_dir)
    for cmd in cmds:
        assert cmd[cmd.index("--api-key") + 1] == "up-key-123", f"no --api-key in {cmd}"
    assert client_auth == "Bearer up-key-123", "pdcore up's own calls need the key too"
    assert "up-key-123" not in repr(args)


def test_busy_router_port_is_refused_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        out = run_cli("up", "--port", str(port))
    assert out.returncode == 2, out.stderr
    assert f"--port: 127.0.0.1:{port} is not free" in out.stderr, out.stderr
    assert time.monotonic() - started < 10, "a busy port should fail before servers load"


def test_cluster_answers_through_router_and_ctrl_c_leaves_nothing(qwen3_path):
    port = free_port()
    up = Up("--model-path", qwen3_path, "--port", str(port), *SMALL)
    try:
        url = up.wait_ready()
        assert url == f"http://127.0.0.1:{port}", up.log()
        curl = f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'"
        assert any(curl in line for line in up.stdout), f"no ready-to-paste curl:\n{up.log()}"
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, trust_env=False)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"], f"empty answer: {r.json()}"
        known = up.track()
        assert known >= 5, f"expected 2 servers + 2 engines + router, saw {known}: {up.log()}"
        up.proc.send_signal(signal.SIGINT)
        assert up.wait_exit(20) == 0, up.log()
        assert not up.leftovers(), f"processes outlived `pdcore up`: {up.leftovers()}"
        assert can_bind(port), f"router port {port} still taken after shutdown"
        assert_logs_kept(up)
    finally:
        up.kill()


@pytest.mark.slow
def test_once_answers_one_question_over_nixl_and_exits(qwen3_path):
    """No --port: --once takes any free one. Flags after -- go to every server."""
    args = ("--model-path", qwen3_path, "--transfer-backend", "nixl", "--max-tokens", "8")
    up = Up(*args, "--once", "Say hi", "--", *SMALL[1].split())
    try:
        assert up.wait_exit(120) == 0, up.log()
        assert any(line.startswith("A: ") for line in up.stdout), f"no answer:\n{up.log()}"
        assert "nixl transfer" in "".join(up.stderr), f"nixl not mentioned:\n{up.log()}"
        assert "router on" not in "".join(up.stdout), "--once should not print the curl"
        assert not up.leftovers(), f"processes outlived `pdcore up --once`: {up.leftovers()}"
    finally:
        up.kill()


def test_server_that_fails_to_start_stops_everything_with_its_error():
    up = Up("--model-path", "/nonexistent", "--port", str(free_port()))
    try:
        assert up.wait_exit(60) == 1, up.log()
        err = "".join(up.stderr)
        assert re.search(r"(prefill|decode)-0 exited with code 1", err), err
        assert "'/nonexistent' does not exist" in err, f"the server's own error is missing:\n{err}"
        assert not up.leftovers(), f"processes outlived a failed start: {up.leftovers()}"
        kept = re.search(r"logs kept in (\S+)", err)
        assert kept and os.path.isdir(kept.group(1)), f"no log folder to look at:\n{err}"
        shutil.rmtree(kept.group(1))
    finally:
        up.kill()


def test_sigterm_while_loading_stops_the_servers(qwen3_path):
    up = Up("--model-path", qwen3_path, "--port", str(free_port()), *SMALL)
    try:
        deadline = time.monotonic() + 30
        while up.track() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up.track() >= 2, f"servers never started:\n{up.log()}"
        up.proc.send_signal(signal.SIGTERM)
        assert up.wait_exit(30) == 128 + signal.SIGTERM, up.log()
        assert not up.leftovers(), f"processes outlived an interrupted start: {up.leftovers()}"
    finally:
        up.kill()
