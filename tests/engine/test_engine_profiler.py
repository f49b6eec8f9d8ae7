"""The engine's profiler state machine: idle -> running -> idle, with a ``num_steps``
run that stops itself and waits to be collected; refusals are 400 replies, never
exceptions; trace files are Chrome trace JSON named by the server's role."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from pdcore.engine.io_struct import StartProfileReq
from pdcore.engine.profiler import EngineProfiler
from pdcore.platform import CpuPlatform

CPU = CpuPlatform()

NAME = re.compile(r"^\d{8}-\d{6}\.\d{3}-(prefill|decode|null)-TP-0(-\d+)?\.trace\.json$")


def work(profiler: EngineProfiler, steps: int = 1) -> None:
    """What the engine loop does per model step: compute inside the step scope, then count."""
    for _ in range(steps):
        with profiler.step_scope():
            torch.mm(torch.ones(8, 8), torch.ones(8, 8))
        profiler.after_step()


def start(profiler: EngineProfiler, tmp_path, **fields):
    return profiler.start(StartProfileReq(token=7, output_dir=str(tmp_path), **fields))


def trace_names(path: str) -> set[str]:
    with open(path) as f:
        trace = json.load(f)
    assert "traceEvents" in trace, f"{path} is not a Chrome trace: keys {sorted(trace)}"
    return {e.get("name") for e in trace["traceEvents"]}


def test_start_then_stop_writes_one_role_named_chrome_trace(tmp_path):
    profiler = EngineProfiler("decode", CPU)
    started = start(profiler, tmp_path)
    assert started.success and started.token == 7, started
    assert started.activities == ["CPU"], "a CPU engine traces CPU activity only by default"
    assert started.files == [], "nothing is written before the stop"
    work(profiler, 3)
    stopped = profiler.stop(token=8)
    assert stopped.success and stopped.token == 8 and stopped.role == "decode", stopped
    assert stopped.steps == 3, stopped
    [path] = stopped.files
    assert os.path.dirname(path) == str(tmp_path), path
    assert NAME.match(os.path.basename(path)), f"not named <time>-<role>-TP-<rank>: {path}"
    assert "-decode-" in os.path.basename(path)
    names = trace_names(path)
    assert "aten::mm" in names, "the model's operators must be in the trace"
    assert "pdcore.decode_step" in names, "each engine step is a named range in the trace"
    assert not profiler.running


def test_num_steps_stops_by_itself_and_waits_to_be_collected(tmp_path):
    profiler = EngineProfiler("prefill", CPU)
    assert start(profiler, tmp_path, num_steps=3).num_steps == 3
    work(profiler, 2)
    assert profiler.running, "stopped before num_steps model steps"
    work(profiler, 1)
    assert not profiler.running, "still running after num_steps model steps"
    [path] = os.listdir(tmp_path)
    assert "-prefill-" in path, "the trace is written when the profiler stops itself"
    work(profiler, 2)  # later steps are not traced and change nothing
    collected = profiler.stop(token=9)
    assert collected.success and collected.token == 9, collected
    assert collected.steps == 3 and "after 3 steps" in collected.message, collected
    assert [os.path.basename(f) for f in collected.files] == [path]
    again = profiler.stop()
    assert (again.success, again.status) == (False, 400), "a result is collected only once"


def test_second_start_is_refused_and_the_first_profile_goes_on(tmp_path):
    profiler = EngineProfiler("null", CPU)
    assert start(profiler, tmp_path).success
    second = start(profiler, tmp_path / "other")
    assert (second.success, second.status) == (False, 400), second
    assert "already in progress" in second.message, second.message
    assert not (tmp_path / "other").exists(), "a refused start must not create its output_dir"
    work(profiler)
    assert len(profiler.stop().files) == 1, "the first profile must still be collectable"


def test_stop_without_start_is_refused(tmp_path):
    reply = EngineProfiler("null", CPU).stop(token=3)
    assert (reply.success, reply.status, reply.token) == (False, 400, 3), reply
    assert "not in progress" in reply.message and "/start_profile" in reply.message


def test_output_dir_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    profiler = EngineProfiler("null", CPU)
    reply = profiler.start(StartProfileReq(output_dir=str(blocker / "traces")))
    assert (reply.success, reply.status) == (False, 400), reply
    assert "output_dir" in reply.message and "cannot be created" in reply.message, reply.message
    assert not profiler.running


def test_missing_output_dir_is_created(tmp_path):
    profiler = EngineProfiler("null", CPU)
    assert start(profiler, tmp_path / "new" / "dir").success
    assert os.path.dirname(profiler.stop().files[0]) == str(tmp_path / "new" / "dir")


@pytest.mark.parametrize(
    "activities, message",
    [(["GPU"], "needs a CUDA device"), (["CPU", "CUDA"], "needs a CUDA device"),
     (["TPU"], "CPU, GPU, CUDA"), ([], "non-empty")],
)  # fmt: skip
def test_activities_the_device_cannot_trace_are_refused(tmp_path, activities, message):
    profiler = EngineProfiler("null", CPU)
    reply = start(profiler, tmp_path, activities=activities)
    assert (reply.success, reply.status) == (False, 400), reply
    assert "activities" in reply.message and message in reply.message, reply.message
    assert not profiler.running


def test_profiles_started_in_the_same_millisecond_never_overwrite(tmp_path):
    profiler = EngineProfiler("decode", CPU, clock=lambda: 1_700_000_000.5)
    paths = []
    for _ in range(2):
        assert start(profiler, tmp_path).success
        work(profiler)
        paths += profiler.stop().files
    assert len(set(paths)) == 2 and all(os.path.exists(p) for p in paths), paths


def test_prefix_goes_in_front_of_the_file_name(tmp_path):
    profiler = EngineProfiler("prefill", CPU)
    start(profiler, tmp_path, prefix="run7")
    [path] = profiler.stop().files
    assert os.path.basename(path).startswith("run7-"), path
    assert NAME.match(os.path.basename(path).removeprefix("run7-")), path


class DeviceTracingPlatform(CpuPlatform):
    """A platform whose profiler traces its device too (as CUDA's does)."""

    name = "traced"

    def profiler_activities(self) -> tuple[str, ...]:
        return ("CPU", "CUDA")


def test_default_activities_come_from_the_platform(tmp_path):
    profiler = EngineProfiler("decode", DeviceTracingPlatform())
    started = start(profiler, tmp_path)
    profiler.close()
    assert started.success, started
    assert started.activities == ["CPU", "CUDA"], (
        "a platform that traces its device must get device activity without asking for it"
    )


def test_a_platform_that_traces_the_device_accepts_gpu_activity(tmp_path):
    profiler = EngineProfiler("decode", DeviceTracingPlatform())
    started = start(profiler, tmp_path, activities=["CPU", "GPU"])
    profiler.close()
    assert started.success and started.activities == ["CPU", "CUDA"], (
        f"GPU tracing is refused only where the platform cannot trace the device: {started}"
    )
