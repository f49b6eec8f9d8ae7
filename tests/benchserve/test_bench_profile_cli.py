"""`pdcore bench serving --profile` as a command: its flags are checked like the others,
and a server that cannot profile stops the run before any measured request."""

from __future__ import annotations

import pytest
from benchserve.stub_server import StubServer

from pdcore.benchserve.cli import run


def test_profile_output_dir_without_profile_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--profile-output-dir", "/tmp/traces", "--num-prompts", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--profile-output-dir: needs --profile" in err, err


def test_server_without_start_profile_stops_the_run_with_one_line(capsys):
    stub = StubServer()  # answers /generate, not /start_profile
    try:
        code = run(
            ["--base-url", stub.url, "--num-prompts", "3", "--random-input-len", "4",
             "--random-output-len", "2", "--warmup-requests", "1", "--profile"]
        )  # fmt: skip
    finally:
        stub.stop()
    assert code == 1
    err = capsys.readouterr().err
    assert f"--profile: {stub.url}/start_profile answered 404" in err, err
    assert "Traceback" not in err, err
    assert len(stub.bodies) == 1, "only the warm-up may run when profiling cannot start"
