"""A busy port that an engine process would bind after loading fails ``serve`` at once,
as one line naming the flag, before any engine process starts."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from server.fake_backend import ByteTokenizer
from server.harness import free_port

from pdcore.config import ServerArgs
from pdcore.server import launch
from pdcore.server.ports import engine_ports


class _NoEngineGroup:
    """Stands in for the engine processes: records that loading began, then fails."""

    started = False

    def __init__(self, *args, **kwargs):
        self.ranks = [0]

    def start(self):
        type(self).started = True
        raise launch.EngineStartError("the engine was started")

    def stop(self):
        pass


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    _NoEngineGroup.started = False
    monkeypatch.setattr(launch, "EngineGroup", _NoEngineGroup)
    return _NoEngineGroup


def _serve(args: ServerArgs) -> int:
    return launch.serve(args, server_info={"device": "cpu"}, tokenizer=ByteTokenizer())


def test_busy_bootstrap_port_fails_before_loading(no_engine, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        args = ServerArgs(
            model_path="/models/Fake-Model-1B",
            port=free_port(),
            log_level="warning",
            disaggregation_mode="prefill",
            disaggregation_bootstrap_port=taken,
        )
        rc = _serve(args)
    err = capsys.readouterr().err.strip()
    assert rc == 1, "a busy bootstrap port must exit 1, as a busy --port does"
    assert not no_engine.started, "the model was loaded although the bootstrap port was busy"
    assert err.startswith("pdcore: error: --disaggregation-bootstrap-port"), (
        f"the error must name the flag: {err!r}"
    )
    assert f"127.0.0.1:{taken}" in err and len(err.splitlines()) == 1, (
        f"one line with the address that is busy: {err!r}"
    )


def test_busy_dist_init_port_fails_before_loading(no_engine, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        args = ServerArgs(
            model_path="/models/Fake-Model-1B",
            port=free_port(),
            log_level="warning",
            tp_size=2,
            dist_init_addr=f"127.0.0.1:{taken}",
        )
        rc = _serve(args)
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert not no_engine.started, (
        "the TP ranks were started although their rendezvous port was busy"
    )
    assert err.startswith("pdcore: error: --dist-init-addr") and str(taken) in err, err


def test_decode_does_not_check_the_bootstrap_port(no_engine, capsys):
    """Only prefill listens on it: a decode beside a prefill on one host shares the default."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        args = ServerArgs(
            model_path="/models/Fake-Model-1B",
            port=free_port(),
            log_level="warning",
            disaggregation_mode="decode",
            disaggregation_bootstrap_port=busy.getsockname()[1],
        )
        _serve(args)
    assert no_engine.started, "decode refused a bootstrap port it never binds"


def test_multi_node_dp_attention_checks_the_engine_socket_ports():
    args = ServerArgs(
        model_path="/models/Fake-Model-1B",
        tp_size=4,
        dp_size=2,
        enable_dp_attention=True,
        nnodes=2,
        dist_init_addr="10.0.0.1:5000",
    )
    got = [(flag, port) for flag, _, port in engine_ports(args)]
    assert got == [("--dist-init-addr", p) for p in (5000, 5001, 5002, 5003)], (
        "node 0 listens on the rendezvous port and PORT+1..PORT+groups+1 for its engines"
    )
    follower = dataclasses.replace(args, node_rank=1)
    assert engine_ports(follower) == [], "other nodes bind none of these"
