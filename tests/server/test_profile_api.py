"""``/start_profile`` and ``/stop_profile`` on a real null-mode server (the tiny engine
model through ``serve``): the trace is written by the engine process, named by role,
and every misuse is a 400 that names the field or says what to call instead."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from server.harness import TINY_SERVER_SCRIPT, free_port, run_script, wait_healthy

SCRIPT = TINY_SERVER_SCRIPT
GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory):
    """The server's ``SGLANG_TORCH_PROFILER_DIR``: the default ``output_dir``, and the
    folder every ``output_dir`` must be in (the tests' ``tmp_path`` folders are)."""
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def url(env_dir):
    port = free_port()
    env = {"SGLANG_TORCH_PROFILER_DIR": str(env_dir), "PDCORE_TORCH_PROFILER_DIR": ""}
    proc = run_script(SCRIPT.format(port=port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=120)
        yield url
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def server(url):
    """The server, with no profile left running by an earlier (failed) test."""
    yield url
    post(url, "/stop_profile")


def post(url: str, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120, **kw)


def generate(url: str, first: int) -> None:
    body = {"input_ids": list(range(first, first + 10)), "sampling_params": GREEDY}
    r = post(url, "/generate", body)
    assert r.status_code == 200, r.text


def error_message(r: httpx.Response) -> str:
    assert r.status_code == 400, f"expected 400, got {r.status_code}: {r.text}"
    return r.json()["error"]["message"]


def test_start_generate_stop_writes_a_null_role_chrome_trace(server, tmp_path):
    body = {"output_dir": str(tmp_path / "traces"), "record_shapes": True, "activities": ["cpu"]}
    started = post(server, "/start_profile", body)
    assert started.status_code == 200, started.text
    assert started.json()["role"] == "null" and started.json()["files"] == [], started.json()
    for first in (40, 60, 80):
        generate(server, first)
    stopped = post(server, "/stop_profile")
    assert stopped.status_code == 200, stopped.text
    out = stopped.json()
    assert out["steps"] >= 3 * GREEDY["max_new_tokens"] - 2, f"model steps not counted: {out}"
    [path] = out["files"]
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path / "traces"), path
    assert name.endswith("-null-TP-0.trace.json"), f"not named by role: {name}"
    assert os.path.getsize(path) > 0, f"{path} is empty"
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {e.get("name") for e in events}
    assert "pdcore.null_step" in names, "the engine's steps are missing: traced the wrong process?"
    assert any(e.get("args", {}).get("Input Dims") for e in events), "record_shapes was ignored"


def test_num_steps_stops_by_itself_and_stop_collects_the_file(server, tmp_path):
    started = post(server, "/start_profile", {"output_dir": str(tmp_path), "num_steps": 2})
    assert started.status_code == 200 and started.json()["num_steps"] == 2, started.text
    generate(server, 30)  # 8 model steps
    stopped = post(server, "/stop_profile")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["steps"] == 2, stopped.json()
    assert "after 2 steps" in stopped.json()["message"], stopped.json()
    assert [os.path.join(tmp_path, f) for f in os.listdir(tmp_path)] == stopped.json()["files"]
    assert "not in progress" in error_message(post(server, "/stop_profile"))


def test_output_dir_defaults_to_sglang_torch_profiler_dir(server, env_dir):
    assert post(server, "/start_profile").status_code == 200  # no body at all
    [path] = post(server, "/stop_profile").json()["files"]
    assert os.path.dirname(path) == str(env_dir), path


def test_second_start_is_400_and_the_first_profile_survives(server, tmp_path):
    assert post(server, "/start_profile", {"output_dir": str(tmp_path)}).status_code == 200
    again = post(server, "/start_profile", {"output_dir": str(tmp_path)})
    assert "already in progress" in error_message(again)
    stopped = post(server, "/stop_profile")
    assert stopped.status_code == 200 and len(stopped.json()["files"]) == 1, stopped.text


def test_stop_when_not_started_is_400(server):
    message = error_message(post(server, "/stop_profile"))
    assert "not in progress" in message and "/start_profile" in message, message


@pytest.mark.parametrize(
    "body, field",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": "many"}, "num_steps"),
        ({"activities": ["TPU"]}, "activities"),
        ({"activities": []}, "activities"),
        ({"activities": ["GPU"]}, "activities"),  # a CPU engine cannot trace CUDA
        ({"record_shapes": "yes"}, "record_shapes"),
        ({"with_stack": 1}, "with_stack"),
        ({"output_dir": ""}, "output_dir"),
        ({"profile_prefix": "../escape"}, "profile_prefix"),
        ({"profile_by_stage": True}, "profile_by_stage"),  # null mode mixes the stages
        ({"start_step": 3}, "start_step"),  # an SGLang field pdcore does not implement
    ],
)
def test_bad_field_is_400_naming_it(server, body, field):
    message = error_message(post(server, "/start_profile", body))
    assert field in message, f"{body}: the message does not name {field!r}: {message}"
    assert "not in progress" in error_message(post(server, "/stop_profile")), (
        f"{body} must not have started a profile"
    )


def test_output_dir_that_cannot_be_created_is_400(server, tmp_path):
    (tmp_path / "file").write_text("")
    body = {"output_dir": str(tmp_path / "file" / "traces")}
    message = error_message(post(server, "/start_profile", body))
    assert "output_dir" in message and "cannot be created" in message, message


def test_body_that_is_not_an_object_is_400(server):
    r = httpx.post(f"{server}/start_profile", content=b"[1]", timeout=30,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
