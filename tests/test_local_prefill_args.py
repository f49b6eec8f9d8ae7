"""``--disaggregation-local-prefill-threshold``: decode only, never negative; the
environment variable is its default on decode and ignored elsewhere."""

from __future__ import annotations

import shlex

import pytest

from pdcore.launch_server import parse_server_args
from pdcore.registry import Registry

FLAG = "--disaggregation-local-prefill-threshold"
ENV = "PDCORE_DISAGGREGATION_LOCAL_PREFILL_THRESHOLD"


@pytest.fixture(scope="module")
def registry():
    return Registry.discover(env={})


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for var in (ENV, "SGLANG_DISAGGREGATION_LOCAL_PREFILL_THRESHOLD"):
        monkeypatch.delenv(var, raising=False)


def threshold(registry, argv: str) -> int:
    args = parse_server_args(shlex.split(argv), registry, prog="pdcore serve")[0]
    return args.disaggregation_local_prefill_threshold


def flag_error(registry, capsys, argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_server_args(shlex.split(argv), registry, prog="pdcore serve")
    assert exc.value.code == 2, "invalid flags must exit with status 2"
    return capsys.readouterr().err


@pytest.mark.parametrize("mode", ["prefill", "null"])
def test_only_a_decode_server_takes_the_flag(registry, capsys, mode):
    err = flag_error(registry, capsys, f"--disaggregation-mode {mode} {FLAG} 64")
    assert f"{FLAG}: only applies with --disaggregation-mode decode" in err, err
    assert threshold(registry, f"--disaggregation-mode {mode} {FLAG} 0") == 0, "0 is off"


def test_negative_threshold_is_refused(registry, capsys):
    err = flag_error(registry, capsys, f"--disaggregation-mode decode {FLAG} -1")
    assert f"{FLAG}: must be >= 0" in err, err


def test_decode_default_is_off_or_the_environment(registry, monkeypatch):
    assert threshold(registry, "--disaggregation-mode decode") == 0
    monkeypatch.setenv(ENV, "128")
    assert threshold(registry, "--disaggregation-mode decode") == 128
    assert threshold(registry, f"--disaggregation-mode decode {FLAG} 32") == 32, "flag wins"
    # One exported variable for a whole cluster (pdcore up): prefill ignores it.
    assert threshold(registry, "--disaggregation-mode prefill") == 0


def test_bad_environment_value_is_named(registry, capsys, monkeypatch):
    monkeypatch.setenv(ENV, "lots")
    err = flag_error(registry, capsys, "--disaggregation-mode decode")
    assert f"{ENV}: expected an integer" in err, err
